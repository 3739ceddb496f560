"""IMDB movie reviews: the offline default (tfx's 100 bundled labelled reviews) and a
downloader for the full aclImdb data set (25,000 train + 25,000 test reviews) when online.

    python -m data.imdb TARGET_DIR     # then: conveyor run text --data TARGET_DIR
"""
import csv
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.request

ACLIMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
# tfx's file labels reviews 0 (negative) / 1 (positive); the CSV gets the names, so
# predictions say "positive" like the class names of other IMDB CSVs.
BUNDLED_LABELS = {"0": "negative", "1": "positive"}
# aclImdb/<split>/<pos|neg>/<id>_<rating>.txt; the `unsup` folder (unlabelled) is not kept.
_REVIEW_MEMBER = re.compile(r"^(?:[^/]+/)?(train|test)/(pos|neg)/([^/]+\.txt)$")


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder (absolute path or '..')."""


def bundled_reviews_path() -> str:
    """Path of the 100 labelled IMDB reviews shipped in the tfx package (CSV-like text file)."""
    import tfx
    return os.path.join(os.path.dirname(tfx.__file__), "examples", "imdb", "data",
                        "imdb_small_with_labels.txt")


def bundled_reviews_dir(home: str) -> str:
    """HOME/data/imdb_small holding reviews.csv (`text,label` with negative/positive labels),
    written once from tfx's bundled reviews; returns the folder."""
    folder = os.path.join(os.path.abspath(home), "data", "imdb_small")
    target = os.path.join(folder, "reviews.csv")
    if os.path.exists(target):
        return folder
    os.makedirs(folder, exist_ok=True)
    with open(bundled_reviews_path(), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".reviews-", suffix=".tmp",
                                     encoding="utf-8", newline="", delete=False) as out:
        try:
            writer = csv.writer(out)
            writer.writerow(["text", "label"])
            writer.writerows([row["text"], BUNDLED_LABELS[row["label"]]] for row in rows)
        except BaseException:
            os.unlink(out.name)
            raise
    os.replace(out.name, target)
    return folder


def download_aclimdb(target_dir: str, url: str = ACLIMDB_URL) -> str:
    """Downloads and unpacks aclImdb into target_dir/{train,test}/{pos,neg}/*.txt (once);
    returns target_dir, which `conveyor run text --data` reads with its train/test split."""
    if os.path.isdir(target_dir):
        return target_dir
    parent = os.path.dirname(os.path.abspath(target_dir))
    os.makedirs(parent, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=parent, prefix=".aclImdb-", suffix=".tar.gz") as archive:
        with urllib.request.urlopen(url) as response:
            shutil.copyfileobj(response, archive)
        archive.flush()
        unpacked = tempfile.mkdtemp(prefix=".aclImdb-", dir=parent)
        try:
            _unpack_reviews(archive.name, unpacked)
            os.replace(unpacked, target_dir)
        except BaseException:
            shutil.rmtree(unpacked, ignore_errors=True)
            raise
    return target_dir


def _unpack_reviews(archive_path: str, target_dir: str) -> None:
    """Writes the labelled review files of the archive; paths are rebuilt from the matched
    parts, never taken from the archive, and unsafe member names reject the whole archive."""
    count = 0
    with tarfile.open(archive_path, "r:*") as tar:
        for member in tar:
            name = member.name
            if name.startswith("/") or ".." in posixpath.normpath(name).split("/"):
                raise UnsafeArchiveError(f"{archive_path}: member {name!r} points outside the target folder")
            match = _REVIEW_MEMBER.match(posixpath.normpath(name))
            if not match or not member.isfile():
                continue
            folder = os.path.join(target_dir, match.group(1), match.group(2))
            os.makedirs(folder, exist_ok=True)
            with tar.extractfile(member) as source, open(os.path.join(folder, match.group(3)), "wb") as out:
                shutil.copyfileobj(source, out)
            count += 1
    if not count:
        raise ValueError(f"{archive_path}: no <split>/<pos|neg>/*.txt reviews found in the archive")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m data.imdb TARGET_DIR")
    print(download_aclimdb(sys.argv[1]))
