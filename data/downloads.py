"""Downloaders for the public image data sets, for users who are online.

Each file is fetched to a hidden temp file, checked to be a well-formed IDX file, then
renamed into place, so an interrupted download never leaves a file that looks complete.
"""
import os
import shutil
import tempfile
import urllib.request
from typing import List

from data.idx import IdxError, read_idx

IDX_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
SOURCES = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
}


class DownloadError(RuntimeError):
    """A download failed or produced a file that is not what was expected."""


def fetch(url: str, path: str, timeout: float = 60.0) -> str:
    """Downloads `url` into a hidden temp file beside `path` and returns the temp file's path
    (the caller checks it and renames it to `path`). `timeout` in seconds per socket operation.
    Raises OSError / urllib.error.URLError on network failures (the temp file is removed)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Same suffix as the final name, so readers that look at the extension (.gz) work on it.
    suffix = ".gz" if path.endswith(".gz") else ""
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out)
        return tmp
    except (OSError, ValueError) as e:
        os.unlink(tmp)
        raise DownloadError(f"{url}: download failed ({e})") from e


def download_idx_dataset(name: str, target_dir: str, base_url: str = "") -> List[str]:
    """Fetches MNIST or Fashion-MNIST as published (4 IDX files) into target_dir."""
    if name not in SOURCES:
        raise DownloadError(f"unknown data set {name!r}; expected one of {', '.join(SOURCES)}")
    base_url = base_url or SOURCES[name]
    written = []
    for filename in IDX_FILES:
        final = os.path.join(target_dir, filename)
        if os.path.exists(final):
            written.append(final)
            continue
        tmp = fetch(base_url + filename, final)
        try:
            read_idx(tmp)
        except IdxError as e:
            os.unlink(tmp)
            raise DownloadError(f"{base_url + filename}: not a valid IDX file ({e})") from e
        os.replace(tmp, final)
        written.append(final)
    return written

