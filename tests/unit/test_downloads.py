"""The MNIST downloader's fetch/verify/rename path, served from local copies of the real files."""
import os
import shutil

import pytest

from data.downloads import IDX_FILES, DownloadError, download_idx_dataset
from data.idx import read_idx
from tests.support.helpers import SHARED_DATA


@pytest.fixture
def mirror(tmp_path):
    """A file:// mirror laid out like the public one (the t10k files stand in for train too)."""
    if not os.path.isdir(os.path.join(SHARED_DATA, "mnist")):
        pytest.skip(f"the real MNIST files are not in {SHARED_DATA}/mnist")
    root = tmp_path / "mirror"
    root.mkdir()
    for name in IDX_FILES:
        source = name.replace("train-", "t10k-")
        shutil.copy(os.path.join(SHARED_DATA, "mnist", source), root / name)
    return "file://" + str(root) + "/"


def test_download_mnist_from_mirror(mirror, tmp_path):
    files = download_idx_dataset("mnist", str(tmp_path / "mnist"), base_url=mirror)
    assert sorted(os.path.basename(f) for f in files) == sorted(IDX_FILES)
    assert read_idx(str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz")).shape == (10000, 28, 28)
    assert not [f for f in os.listdir(tmp_path / "mnist") if f.startswith(".")]


def test_corrupt_download_leaves_nothing(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for name in IDX_FILES:
        (root / name).write_bytes(b"<html>not found</html>")
    with pytest.raises(DownloadError, match="train-images-idx3-ubyte.gz: not a valid IDX file"):
        download_idx_dataset("fashion-mnist", str(tmp_path / "out"), base_url="file://" + str(root) + "/")
    assert os.listdir(tmp_path / "out") == []


def test_unreachable_source_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError, match="download failed"):
        download_idx_dataset("mnist", str(tmp_path / "out"), base_url="file:///nonexistent/")
    with pytest.raises(DownloadError, match="unknown data set"):
        download_idx_dataset("cifar", str(tmp_path / "out"))
