"""The image contract (modules/image_contract.py): what ingestion accepts, what it makes of
it, and what the exported graph decodes (issue 13, case 2). Every variant is generated."""
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.image_example_gen import ImageExampleGen, detect_input_pattern
from components.labelled_example_gen import IngestError
from modules import image_contract as contract
from modules.preprocessing import decode_images
from tests.support.generated import INGEST_ONLY, SERVED, digit_like, gif_with_frames, image_files
from tests.support.helpers import read_examples, run_example_gen

PIXELS = digit_like(2, np.random.default_rng(0))
FILES = image_files(PIXELS)


def _graph_pixels(data: bytes, channels: int) -> np.ndarray:
    """What Transform and the serving signature compute, before resizing and scaling."""
    decoded = decode_images(tf.constant([data]), PIXELS.shape[0], channels)[0].numpy()
    return np.round(decoded * 255.0).astype(np.uint8)


def _pil(data: bytes, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert(mode))


def _expected(name: str, data: bytes) -> np.ndarray:
    """The pixels the contract promises, worked out without it: for served formats TF's own
    decode of the original file; for the others the generated pixels (lossless formats) or
    PIL's conversion (CMYK JPEG, 1-bit BMP)."""
    if name in SERVED:
        image = tf.io.decode_image(data, channels=0, expand_animations=False).numpy()
        return image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
    if name == "jpeg_cmyk":
        return _pil(data, "RGB")
    if name == "bmp_1bit":
        return _pil(data, "L")[..., None]
    if name in ("webp", "tiff"):
        return np.repeat(PIXELS[..., None], 3, axis=-1)
    return PIXELS[..., None]


@pytest.mark.parametrize("name", SERVED + INGEST_ONLY)
def test_normalised_png_decodes_in_the_graph_to_the_promised_pixels(name):
    _, data = FILES[name]
    png = contract.normalize(data)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.mode in ("L", "RGB")
    expected = _expected(name, data)
    assert np.array_equal(contract._decode_served(png), expected)
    for channels in (1, 3):
        from_png = _graph_pixels(png, channels)
        assert from_png.shape == PIXELS.shape + (channels,)
        if name in SERVED:  # a served file gives the server the very pixels training saw
            assert np.array_equal(_graph_pixels(data, channels), from_png)


@pytest.mark.parametrize("name", INGEST_ONLY)
def test_other_formats_are_refused_by_the_graph_naming_the_input(name):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"serving input images: the bytes are not PNG, JPEG \(grey or RGB\), "
                             r"GIF \(first frame\) or 24-bit BMP"):
        decode_images(tf.constant([FILES[name][1]]), 8, 1)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (no pixel data follows)."""
    png = bytearray(FILES["png_grey"][1])
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _float_tiff() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PIXELS.astype(np.float32)).save(buffer, format="TIFF")
    return buffer.getvalue()


BAD_FILES = {
    "empty.png": (b"", "empty file (0 bytes)"),
    "truncated.png": (FILES["png_grey"][1][:60], "not a readable image"),
    "truncated.jpg": (FILES["jpeg_rgb"][1][:300], "not a readable image"),
    "notes.png": ("a text file, not a picture\n".encode(), "not an image (no format PIL reads)"),
    "huge.png": (_png_claiming(20000, 20000), "PNG of 20000x20000 pixels is more than the limit of "
                                             "89,478,485 pixels per image"),
    "frames.gif": (gif_with_frames((16, 16), [(5000, 5000)] * 4), "GIF of 16x16 pixels (100,000,000 in "
                                                                  "all frames) is more than the limit"),
    "float.tiff": (_float_tiff(), "pixel mode F"),
    "readme.txt": (b"hello", "not an image file (expected .png"),
}


@pytest.mark.parametrize("file_name", sorted(BAD_FILES))
def test_every_bad_file_is_rejected_with_a_reason(file_name):
    data, reason = BAD_FILES[file_name]
    if file_name.endswith(".txt"):
        return  # refused by its extension before decoding (see the ExampleGen test)
    with pytest.raises(contract.ImageRejected, match=reason.replace("(", r"\(").replace(")", r"\)")):
        contract.normalize(data)


def _folder(root, with_bad: bool):
    for label in ("0", "1"):
        os.makedirs(root / label)
        for name in SERVED + INGEST_ONLY:
            extension, data = image_files(digit_like(int(label), np.random.default_rng(len(name))))[name]
            (root / label / f"{name}{extension}").write_bytes(data)
    if with_bad:
        for file_name, (data, _) in BAD_FILES.items():
            (root / "1" / file_name).write_bytes(data)
    return str(root)


def _ingest(data_dir, out, **kwargs):
    return run_example_gen(ImageExampleGen(input_base=data_dir, input_pattern=detect_input_pattern(data_dir),
                                           **kwargs), str(out))


def test_image_example_gen_trains_on_normalised_pngs_and_names_every_bad_file(tmp_path):
    data = _folder(tmp_path / "data", with_bad=True)
    with pytest.raises(IngestError, match=r"1/empty\.png: empty file \(0 bytes\); .*--skip-bad-images"):
        _ingest(data, tmp_path / "strict")
    examples = _ingest(data, tmp_path / "out", skip_bad_images=True)
    skipped = {os.path.basename(s["source"]): s["reason"]
               for s in json.loads((tmp_path / "out" / "skipped.json").read_text())}
    assert sorted(skipped) == sorted(BAD_FILES)
    for file_name, (_, reason) in BAD_FILES.items():
        assert reason in skipped[file_name], (file_name, skipped[file_name])
    records = read_examples(examples.uri, "train") + read_examples(examples.uri, "eval")
    assert len(records) == 2 * len(SERVED + INGEST_ONLY)
    for record in records:
        png = record.features.feature["image_raw"].bytes_list.value[0]
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.mode in ("L", "RGB")
        # The Trainer sees the graph's decode of this PNG: the promised pixels, any format.
        label = record.features.feature["label_name"].bytes_list.value[0].decode()
        assert _graph_pixels(png, 1).shape == (16, 16, 1) and label in ("0", "1")


@pytest.mark.parametrize("name", SERVED + INGEST_ONLY)
def test_predict_client_sends_what_the_model_decodes_to_the_trained_pixels(name, tmp_path):
    """`conveyor predict` (serving/client.py) mirrors ingestion for every accepted file."""
    from serving.client import read_image_file
    extension, data = FILES[name]
    path = tmp_path / f"{name}{extension}"
    path.write_bytes(data)
    sent = read_image_file(str(path))
    assert (sent == data) == (name in SERVED)
    for channels in (1, 3):
        assert np.array_equal(_graph_pixels(sent, channels), _graph_pixels(contract.normalize(data), channels))


def test_predict_client_names_a_file_it_cannot_send(tmp_path):
    from serving.client import read_image_file
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(OSError) as error:
        read_image_file(str(path))
    assert str(error.value) == f"{path}: not an image Conveyor can send (no image format PIL reads)"
