"""Encoded images sent to a model, checked from their headers before a graph decodes them.

A Conveyor image model decodes its input bytes inside its own graph, and TF's decoders
allocate width x height x channels bytes for whatever size a header claims: a 20000 x 20000
PNG of one grey level is about 400 KB on the wire (deflate shrinks runs of zeros about a
thousandfold) and 0.4 to 1.2 GB once decoded (grey, or converted to RGB). Ingestion refuses images
with more than contract.MAX_IMAGE_PIXELS pixels (modules/image_contract.py); the server applies
the same rule, with the same `over_limit` message, to the values of the contract's image input
before the graph runs, reading headers only, and names the instance of a value that is no image.

Formats are recognised by their leading bytes as TF's decode_image does
(tensorflow/core/kernels/image/decode_image_op.cc, ClassifyFileFormat): JPEG, PNG, GIF, BMP.
The pixels counted are those TF's decoder allocates:
  * PNG: width x height of the IHDR chunk, which the PNG specification puts first (11.2.2);
  * JPEG: the size in the first frame header (SOF0-SOF15 marker segment; ITU-T T.81 B.2.2),
    found by walking the marker segments from the start of the file (B.1.1.4) as libjpeg's
    header reader does;
  * GIF: the logical screen (TF's output frame) or, when larger, the sum of every frame's image
    descriptor (giflib's DGifSlurp, which TF calls, holds all frames before the first is kept);
  * BMP: width x |height| at bytes 18 and 22 (little-endian int32, as DecodeBmpV2 reads them).
"""
import dataclasses
import struct

import grpc
import numpy as np

from serving import contract
from serving.errors import ServingError

_SIGNATURES = (("JPEG", b"\xff\xd8\xff"), ("PNG", b"\x89PNG\r\n\x1a\n"), ("GIF", b"GIF8"), ("BMP", b"BM"))
DECODED_FORMATS = "PNG, JPEG, GIF or BMP"


class ImageProblem(ValueError):
    """Bytes that are no image TF decodes, or whose header cannot be read; str() says why."""


@dataclasses.dataclass(frozen=True)
class ImageSize:
    """What an image's header promises: format name, width and height in pixels, and the
    pixels the decoder allocates (width * height except for multi-frame GIFs)."""
    format: str
    width: int
    height: int
    pixels: int


def image_format(data: bytes) -> str:
    """'JPEG', 'PNG', 'GIF' or 'BMP' by the leading bytes (TF's rule), '' for anything else."""
    return next((name for name, magic in _SIGNATURES if data.startswith(magic)), "")


def image_size(data: bytes) -> ImageSize:
    """The size an encoded image's header promises, without decoding it.

    Args:
      data: encoded image bytes.
    Returns:
      the ImageSize (see the module docstring for what each format counts).
    Raises:
      ImageProblem: empty bytes, no JPEG/PNG/GIF/BMP signature, or a header too short or
        corrupt to read.
    """
    if not data:
        raise ImageProblem("empty (0 bytes)")
    fmt = image_format(data)
    if not fmt:
        start = data[:12]
        hint = (" (text, not image bytes: send files base64-encoded, {\"b64\": ...})"
                if start.isascii() and start.decode("ascii").isprintable() else "")
        raise ImageProblem(f"not an image: no {DECODED_FORMATS} signature, the bytes start with "
                           f"{start!r}{hint}")
    try:
        if fmt == "PNG":
            if data[12:16] != b"IHDR":
                raise ImageProblem("PNG without an IHDR header chunk")
            width, height = struct.unpack_from(">II", data, 16)
            return ImageSize(fmt, width, height, width * height)
        if fmt == "BMP":
            width, height = struct.unpack_from("<ii", data, 18)
            return ImageSize(fmt, abs(width), abs(height), abs(width * height))
        if fmt == "GIF":
            return _gif_size(data)
        width, height = _jpeg_size(data)
        return ImageSize(fmt, width, height, width * height)
    except (struct.error, IndexError):
        raise ImageProblem(f"{fmt} header is truncated ({len(data)} bytes)") from None


# Start-of-frame markers: 0xC0-0xCF except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length


def _jpeg_size(data: bytes):
    """(width, height) of the first frame header. Raises ImageProblem when scan data or the
    end comes first, struct.error / IndexError when a segment runs past the end."""
    at = 2  # after SOI
    while True:
        if data[at] != 0xFF:
            raise ImageProblem(f"JPEG header cannot be read (no marker at byte {at})")
        while data[at] == 0xFF:  # fill bytes before a marker
            at += 1
        marker = data[at]
        if marker in _SOF_MARKERS:
            height, width = struct.unpack_from(">HH", data, at + 4)  # after length and precision
            return width, height
        if marker in (0xDA, 0xD9):  # start of scan / end of image before any frame header
            raise ImageProblem("JPEG header cannot be read (no frame header before the image data)")
        if marker not in _STANDALONE_MARKERS:
            at += struct.unpack_from(">H", data, at + 1)[0]
        at += 1


def _gif_size(data: bytes) -> ImageSize:
    """GIF89a specification: logical screen descriptor at byte 6, then blocks: 0x21 extension
    (label + data sub-blocks), 0x2C image descriptor (+ local colour table, LZW code size and
    data sub-blocks), 0x3B trailer. Each data sub-block is a size byte and that many bytes."""
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    try:
        while at < len(data) and data[at] in (0x21, 0x2C):
            if data[at] == 0x21:
                at += 2
            else:
                _, _, frame_width, frame_height, frame_flags = struct.unpack_from("<HHHHB", data, at + 1)
                frames += frame_width * frame_height
                at += 10 + (3 << ((frame_flags & 7) + 1) if frame_flags & 0x80 else 0) + 1
            while at < len(data) and data[at]:  # data sub-blocks up to the terminating empty one
                at += 1 + data[at]
            at += 1
    except struct.error:  # truncated after the screen descriptor: the decoder reports it
        pass
    return ImageSize("GIF", width, height, max(width * height, frames))


def over_limit(size: ImageSize) -> str:
    """'' when `size` is within contract.MAX_IMAGE_PIXELS, else the reason, the same words for
    ingestion and serving."""
    if size.pixels <= contract.MAX_IMAGE_PIXELS:
        return ""
    frames = f" ({size.pixels:,} in all frames)" if size.pixels != size.width * size.height else ""
    return (f"{size.format} of {size.width}x{size.height} pixels{frames} is more than the limit of "
            f"{contract.MAX_IMAGE_PIXELS:,} pixels per image (a decompression bomb guard)")


def check_image_input(key: str, values: np.ndarray) -> None:
    """Every value of an encoded-image input must be an image of at most MAX_IMAGE_PIXELS.

    Args:
      key: the input's name (for the message).
      values: the input as sent; bytes or str values (str as UTF-8); other dtypes are left to
        the graph's own type check.
    Raises:
      ServingError(INVALID_ARGUMENT): "Input 'images' instance 3: <why>" for the first bad
        value (instance = index along the batch dimension; 'element [i, j]' for other ranks).
    """
    if not isinstance(values, np.ndarray) or values.dtype.kind not in "OSU":
        return
    for index, value in np.ndenumerate(values):
        data = value.encode("utf-8") if isinstance(value, str) else value
        if not isinstance(data, bytes):
            continue
        try:
            problem = over_limit(image_size(data))
        except ImageProblem as e:
            problem = f"{e}; expected {contract.SERVED_IMAGE_FORMATS}"
        if problem:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Input '{key}' {where(index)}: {problem}")


def where(index) -> str:
    """'instance 3' for a batch index, 'element [0, 2]' for an index of another rank."""
    index = tuple(index) if isinstance(index, tuple) else (index,)
    return f"instance {index[0]}" if len(index) == 1 else f"element {list(index)}"
