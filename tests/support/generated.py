"""Small generated inputs a model can learn, for tests that must not need the network or
../shared/data: reviews in several languages (with emoji) and images in every format PIL
writes. Deterministic for a given seed."""
import csv
import io
import os
import random
from typing import Dict, List, Tuple

import numpy as np

# Per language: words that carry the sentiment, neutral filler, and how words are joined
# (Chinese is written without spaces).
LEXICON: Dict[str, Dict[str, object]] = {
    "en": {"pos": ["wonderful", "brilliant", "superb", "delightful", "moving", "excellent", "great"],
           "neg": ["awful", "boring", "terrible", "dull", "clumsy", "dreadful", "bad"],
           "filler": ["the", "film", "story", "actors", "music", "ending", "camera", "plot", "scenes",
                      "director", "script", "cast", "evening", "cinema", "sequel", "pacing", "dialogue",
                      "was", "and", "really", "quite", "honestly", "overall", "this", "that", "felt"],
           "emoji": ["🙂", "🎬", "👍", "👎", "😡", "🍿"], "sep": " "},
    "ru": {"pos": ["прекрасный", "чудесный", "отличный", "великолепный", "трогательный", "хороший"],
           "neg": ["ужасный", "скучный", "плохой", "отвратительный", "нудный", "слабый"],
           "filler": ["фильм", "сюжет", "актёры", "музыка", "финал", "режиссёр", "сценарий", "вечер",
                      "кино", "очень", "просто", "честно", "этот", "был", "и", "совсем", "диалоги"],
           "emoji": ["🙂", "🎬", "👍", "👎", "😡", "🍿"], "sep": " "},
    "de": {"pos": ["schöner", "großartiger", "fröhlicher", "wunderbarer", "herzlicher", "glänzender"],
           "neg": ["scheußlicher", "öder", "müder", "schwächer", "grässlicher", "lästiger"],
           "filler": ["Film", "Geschichte", "Schauspieler", "Musik", "Ende", "Regisseur", "Drehbuch",
                      "Abend", "Kino", "wirklich", "ganz", "ehrlich", "dieser", "war", "und", "übrigens"],
           "emoji": ["🙂", "🎬", "👍", "👎", "😡", "🍿"], "sep": " "},
    "zh": {"pos": ["精彩", "感人", "出色", "优秀", "好看", "喜欢"],
           "neg": ["无聊", "糟糕", "难看", "失望", "乏味", "讨厌"],
           "filler": ["电影", "故事", "演员", "音乐", "结局", "导演", "剧本", "晚上", "真的", "非常",
                      "这部", "觉得", "整体", "画面"],
           "emoji": ["🙂", "🎬", "👍", "👎", "😡", "🍿"], "sep": ""},
}
LABELS = ("negative", "positive")


def reviews(language: str, count: int, seed: int) -> List[Tuple[str, str]]:
    """`count` distinct (review, label) pairs, balanced; the label is carried by 2 sentiment
    words among 4-8 fillers and an emoji, so a bag-of-words model learns it in a few steps."""
    lex = LEXICON[language]
    rng = random.Random(f"{language}-{seed}")
    seen, rows = set(), []
    while len(rows) < count:
        label = len(rows) % 2
        words = rng.sample(lex["filler"], rng.randint(4, 8)) + rng.sample(lex["pos" if label else "neg"], 2)
        rng.shuffle(words)
        text = lex["sep"].join(words) + rng.choice(["", "!", "."]) + " " + rng.choice(lex["emoji"])
        if text not in seen:
            seen.add(text)
            rows.append((text, LABELS[label]))
    return rows


def write_reviews_csv(folder: str, rows: List[Tuple[str, str]], name: str = "reviews.csv") -> str:
    """A `review,sentiment` CSV of rows in a new folder; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows(rows)
    return folder


def digit_like(label: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A uint8 [size, size] grey image: a bright bar whose position is the class, plus noise."""
    image = rng.integers(0, 40, (size, size)).astype(np.uint8)
    band = size // 4
    start = label * band
    image[start:start + band, 2:size - 2] = 220
    return image


def _encode(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def image_files(pixels: np.ndarray) -> Dict[str, Tuple[str, bytes]]:
    """One uint8 [h, w] grey image in every variant ingestion accepts: name -> (file
    extension, bytes). Served formats (PNG, grey/RGB JPEG, GIF, 24-bit BMP) and formats only
    ingestion reads (WebP, TIFF, CMYK JPEG, 1-bit / palette BMP, 16-bit TIFF)."""
    from PIL import Image
    grey = Image.fromarray(pixels)
    rgb = grey.convert("RGB")
    return {
        "png_grey": (".png", _encode(grey, "PNG")),
        "png_rgba": (".png", _encode(rgb.convert("RGBA"), "PNG")),
        "png_palette": (".png", _encode(rgb.convert("P"), "PNG")),
        "png_16bit": (".png", _encode(Image.fromarray(pixels.astype(np.uint16) * 257), "PNG")),
        "jpeg_grey": (".jpg", _encode(grey, "JPEG", quality=95)),
        "jpeg_rgb": (".jpeg", _encode(rgb, "JPEG", quality=95)),
        "gif": (".gif", _encode(grey, "GIF")),
        "bmp_24bit": (".bmp", _encode(rgb, "BMP")),
        "jpeg_cmyk": (".jpg", _encode(rgb.convert("CMYK"), "JPEG", quality=95)),
        "bmp_8bit": (".bmp", _encode(grey, "BMP")),
        "bmp_1bit": (".bmp", _encode(grey.convert("1"), "BMP")),
        "webp": (".webp", _encode(rgb, "WEBP", lossless=True)),
        "tiff": (".tif", _encode(rgb, "TIFF")),
        "tiff_16bit": (".tiff", _encode(Image.fromarray(pixels.astype(np.uint16) * 257), "TIFF")),
    }


SERVED = ("png_grey", "png_rgba", "png_palette", "png_16bit", "jpeg_grey", "jpeg_rgb", "gif", "bmp_24bit")
INGEST_ONLY = ("jpeg_cmyk", "bmp_8bit", "bmp_1bit", "webp", "tiff", "tiff_16bit")


def image_class_folders(root: str, classes: int, per_class: int, seed: int) -> str:
    """Class folders '0'..'classes-1' of digit_like images, the variants of image_files in
    turn (every variant in every class once per_class >= 14); returns root."""
    rng = np.random.default_rng(seed)
    names = SERVED + INGEST_ONLY
    for label in range(classes):
        os.makedirs(os.path.join(root, str(label)), exist_ok=True)
        for i in range(per_class):
            name = names[(i + label) % len(names)]
            extension, data = image_files(digit_like(label, rng))[name]
            with open(os.path.join(root, str(label), f"{seed}-{i}-{name}{extension}"), "wb") as f:
                f.write(data)
    return root


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of width x height black pixels: deflate shrinks each row of
    zeros about a thousandfold, so 10000 x 10000 (100 MB decoded) is about 100 KB."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    deflate = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + the row's pixels
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def gif_with_frames(screen: Tuple[int, int], frames: List[Tuple[int, int]]) -> bytes:
    """A GIF89a whose logical screen and image descriptors claim these (width, height) sizes,
    each frame with an empty LZW stream: only the headers a decoder sizes its buffers by."""
    import struct
    out = b"GIF89a" + struct.pack("<HHBBB", screen[0], screen[1], 0, 0, 0)
    for width, height in frames:
        out += b"\x21\xf9\x04\x00\x00\x00\x00\x00"  # graphic control extension, one sub-block
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x00"
    return out + b"\x3b"
