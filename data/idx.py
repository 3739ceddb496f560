"""Reader for the IDX format MNIST and Fashion-MNIST are published in (optionally gzipped)."""
import gzip
import struct

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class IdxError(ValueError):
    """The file is not a well-formed IDX file; the message names the file."""


def read_idx(path: str) -> np.ndarray:
    """The array stored in an IDX file (the MNIST format: yann.lecun.com/exdb/mnist), gzipped
    or not.

    Returns:
      an array of the file's shape and dtype, e.g. uint8 [N, 28, 28] for MNIST images,
      uint8 [N] for labels.
    Raises:
      IdxError: the file cannot be read, has a bad magic number or type, or its size does not
        match its header; the message names the file.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise IdxError(f"{path}: cannot read IDX file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IdxError(f"{path}: not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code not in _DTYPES or ndim == 0:
        raise IdxError(f"{path}: unsupported IDX type 0x{dtype_code:02x} with {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[dtype_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxError(f"{path}: IDX header says shape {shape} ({expected} data bytes) "
                       f"but the file has {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def labels_path_for(images_path: str) -> str:
    """MNIST naming: train-images-idx3-ubyte[.gz] pairs with train-labels-idx1-ubyte[.gz]."""
    return images_path.replace("images-idx3", "labels-idx1")


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes a uint8 IDX file (used by tests and by dataset preparation)."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
