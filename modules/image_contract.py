"""The image Conveyor accepts: one contract for ingestion, training and serving.

Two decoders see a pipeline's images: ImageExampleGen reads files with PIL, the exported
graph (Transform at training time, the serving signature afterwards) decodes bytes with
TensorFlow. They do not agree: TF refuses GIF/BMP at channels=1 and 1-bit BMP, WebP and TIFF
altogether, and decodes palette BMP, CMYK JPEG and 16-bit PNG to other pixels than PIL.
So the rule is:

* Served formats (`served_pixels`, the graph's decoder): PNG (any bit depth; 16-bit keeps the
  high byte), JPEG with 1 or 3 components (grey/RGB), GIF (first frame) and 24-bit BMP.
  Decoded with `channels=0`; an alpha channel is dropped; `to_channels` then converts grey <->
  RGB in the graph to the configured channel count. Any other bytes fail with
  InvalidArgumentError naming the input (the server answers 400).
* Ingestion (`normalize`): every file PIL reads (INGEST_EXTENSIONS) becomes an 8-bit grey or
  RGB PNG. Served formats are decoded by `served_pixels` itself, so the Trainer sees exactly
  the pixels the server computes from the same file; other formats (WebP, TIFF, CMYK JPEG,
  palette/1-bit/32-bit BMP, ...) are decoded by PIL: first frame, 1-bit and 16-bit grey to
  8-bit grey (16-bit: high byte, as TF does for PNG), palette/CMYK/YCbCr/LAB to RGB, alpha
  dropped. 32-bit integer and float pixels have no defined 8-bit mapping and are rejected.
  PNG is lossless, so the graph decodes the normalised file to the same pixels.
* Any failure of any kind (empty or truncated file, text with an image extension, a decoder
  exception of any type, more pixels than serving/contract.py's MAX_IMAGE_PIXELS, counted as
  serving/images.py counts what the decoder allocates) is an ImageRejected whose message says
  why; the ExampleGen names the file and honours --skip-bad-images. The server refuses the
  same images with the same words (serving/images.py).
"""
import io
import warnings
from typing import Optional

import numpy as np
import tensorflow as tf

from serving import contract, images

INGEST_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GIF_MAGICS = (b"GIF87a", b"GIF89a")
_JPEG_MAGIC = b"\xff\xd8\xff"
# BITMAPINFOHEADER and its v4/v5 extensions (header size at offset 14, bit count at 28).
_BMP_HEADER_SIZES = (b"(\0\0\0", b"l\0\0\0", b"|\0\0\0")
_BMP_24_BIT = b"\x18\0"
_HEADER = 32


class ImageRejected(ValueError):
    """A file is not an image Conveyor accepts; str() is the reason (no file name)."""


def _is_served_format(data: tf.Tensor) -> tf.Tensor:
    """Scalar bool: `data` (scalar string) starts like a served format (see module doc)."""
    head = tf.strings.substr(tf.strings.join([data, "\0" * _HEADER]), 0, _HEADER)

    def starts(magic: bytes, at: int = 0) -> tf.Tensor:
        return tf.equal(tf.strings.substr(head, at, len(magic)), magic)

    bmp = starts(b"BM") & starts(_BMP_24_BIT, 28) & tf.reduce_any(
        [starts(size, 14) for size in _BMP_HEADER_SIZES])
    jpeg = starts(_JPEG_MAGIC)
    grey_or_rgb_jpeg = tf.cond(
        jpeg, lambda: tf.reduce_any(tf.equal(tf.io.extract_jpeg_shape(data)[2], [1, 3])),
        lambda: tf.constant(False))
    return starts(_PNG_MAGIC) | starts(_GIF_MAGICS[0]) | starts(_GIF_MAGICS[1]) | bmp | grey_or_rgb_jpeg


def served_pixels(data: tf.Tensor) -> tf.Tensor:
    """The graph's decoder: one encoded image -> its pixels, alpha dropped.

    Args:
      data: scalar tf.string, encoded image bytes.
    Returns:
      uint8 [height, width, 1 or 3] (grey or RGB as encoded; GIF: RGB first frame).
    Raises:
      tf.errors.InvalidArgumentError (when run): the bytes are not a served format (the
      message names the serving input and the formats), or the decoder refuses them.
    """
    check = tf.debugging.Assert(
        _is_served_format(data),
        [f"serving input {contract.SERVING_INPUT['image']}: the bytes are not "
         f"{contract.SERVED_IMAGE_FORMATS}; convert other formats to PNG first (conveyor predict does)"],
        summarize=1)
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(data, channels=0, expand_animations=False)
    return tf.cond(tf.shape(image)[-1] >= 3, lambda: image[..., :3], lambda: image[..., :1])


def to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """uint8 [h, w, 1 or 3] -> uint8 [h, w, channels] (tf.image's grey <-> RGB conversions)."""
    if channels == 1:
        out = tf.cond(tf.shape(image)[-1] == 3,
                      lambda: tf.image.rgb_to_grayscale(tf.ensure_shape(image, [None, None, 3])),
                      lambda: image)
    else:
        out = tf.cond(tf.shape(image)[-1] == 1,
                      lambda: tf.image.grayscale_to_rgb(tf.ensure_shape(image, [None, None, 1])),
                      lambda: image)
    return tf.ensure_shape(out, [None, None, channels])


_served_pixels_fn: Optional[tf.types.experimental.ConcreteFunction] = None


def _decode_served(data: bytes) -> np.ndarray:
    global _served_pixels_fn
    if _served_pixels_fn is None:
        _served_pixels_fn = tf.function(served_pixels, autograph=False).get_concrete_function(
            tf.TensorSpec([], tf.string))
    return _served_pixels_fn(tf.constant(data)).numpy()


def _pil_pixels(image) -> np.ndarray:
    """PIL's decode of the first frame, mapped to uint8 [h, w, 1 or 3] (see module doc)."""
    mode = image.mode
    if mode in ("1", "L", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode in ("1", "L"):
            return np.asarray(image.convert("L"))[..., None]
        return np.asarray(image.convert("RGB"))
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel(0))[..., None]
    if mode.startswith("I;16"):
        return (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)[..., None]
    raise ImageRejected(f"pixel mode {mode} (32-bit integer or float pixels, or another mode) has no "
                        "defined 8-bit grey/RGB mapping; save it as 8- or 16-bit grey or RGB")


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 [h, w, 1 or 3] -> PNG bytes."""
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def normalize(data: bytes) -> bytes:
    """An accepted image file's bytes -> the 8-bit grey or RGB PNG the pipeline trains on.

    Args:
      data: the file's bytes.
    Returns:
      PNG bytes whose `served_pixels` equal `served_pixels(data)` for served formats, and
      PIL's pixels (mapped as in the module doc) for the others.
    Raises:
      ImageRejected: for any problem, with the reason (see module doc).
    """
    from PIL import Image, UnidentifiedImageError
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:  # formats TF decodes: the pixels its decoder allocates (a GIF's frames included)
        problem = images.over_limit(images.image_size(data))
    except images.ImageProblem:
        problem = ""  # another format, or a header PIL names the fault of below
    if problem:
        raise ImageRejected(problem)
    try:
        with warnings.catch_warnings():
            # The limit is contract.MAX_IMAGE_PIXELS, checked below; PIL still raises
            # DecompressionBombError from twice its own threshold on.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                problem = images.over_limit(images.ImageSize(image.format or "image", width, height,
                                                             width * height))
                if problem:
                    raise ImageRejected(problem)
                image.load()  # first frame; a truncated or corrupt file fails here
                served = bool(_is_served_format(tf.constant(data)).numpy())
                pixels = None if served else _pil_pixels(image)
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not an image (no format PIL reads)") from None
    except Image.DecompressionBombError as e:
        raise ImageRejected(f"more than the limit of {contract.MAX_IMAGE_PIXELS:,} pixels per image "
                            f"({e})") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is this file's problem
        raise ImageRejected(f"not a readable image ({type(e).__name__}: {_first_line(e)})") from None
    if served:
        try:
            pixels = _decode_served(data)
        except Exception as e:  # noqa: BLE001
            message = e.message if isinstance(e, tf.errors.OpError) else str(e)
            raise ImageRejected(f"TensorFlow cannot decode it ({type(e).__name__}: "
                                f"{_first_line(message)})") from None
    return encode_png(pixels)


def _first_line(error) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
