"""Feature names shared by the ExampleGens, Transform, Trainer and serving signatures."""
LABEL = "label"              # int64 index into the class names (label_names.json)
LABEL_NAME = "label_name"    # the class name itself
IMAGE_RAW = "image_raw"      # encoded PNG/JPEG bytes
TEXT = "text"                # raw review / sentence
IMAGE = "image"              # transformed: float32 [size, size, channels] in [0, 1]
TOKENS = "tokens"            # transformed: int64 [max_tokens] vocabulary ids, 0 = padding
MULTI_HOT = "multi_hot"      # transformed: float32 [vocab + oov] bag of words
TFIDF = "tfidf"              # transformed: float32 [ngram vocab + oov] TF-IDF of words and word pairs

RAW_INPUT = {"image": IMAGE_RAW, "text": TEXT}
# Written by the ExampleGens beside the splits: the class names in label order (index = label).
LABEL_NAMES_FILE = "label_names.json"

# Features whose values are expected to be new in every run (free text, encoded image bytes):
# a value domain (the list of values one run happened to hold) never describes them, so the
# training schema carries none for them and the gate drops any it finds in a blessed model's
# schema (modules/training_schema.py: drop_free_value_domains). Drift in them shows in the
# profile features below.
FREE_VALUE_FEATURES = (TEXT, IMAGE_RAW)

# Profile features: small numbers derived from the raw feature and added to every tf.Example
# by the ExampleGens (and to logged serving requests by serving/request_log.py, through the
# same `profile` function), so TFDV statistics show drift the raw bytes/strings hide: a
# schema can bound them (the gate) and drift comparators can compare their distributions
# (`conveyor drift`). Models never read them: Transform and the serving signatures use only
# the raw feature.
IMAGE_HEIGHT = "image_height"        # int64 pixels of the decoded image
IMAGE_WIDTH = "image_width"          # int64
IMAGE_MEAN = "image_mean"            # float mean grey intensity in [0, 1]
TEXT_TOKENS = "text_tokens"          # int64 whitespace-separated words
TEXT_ALPHA_RATIO = "text_alpha_ratio"        # float letters / non-space characters
TEXT_STOPWORD_RATIO = "text_stopword_ratio"  # float share of words that are common English function words
PROFILE_FEATURES = {"image": (IMAGE_HEIGHT, IMAGE_WIDTH, IMAGE_MEAN),
                    "text": (TEXT_TOKENS, TEXT_ALPHA_RATIO, TEXT_STOPWORD_RATIO)}

# The most frequent English function words. Their share is a cheap language signal: about
# 0.4-0.5 in English prose, near 0 in German or French, so a language shift in the texts
# moves this feature's distribution far (the bundled data sets are English).
_STOPWORDS = frozenset(
    "the a an and or but of to in on at for with from by as is are was were be been it its "
    "this that these those he she they we you i his her their our my your not no so if "
    "than then there what which who have has had do does did will would can could".split())


def profile_image(data: bytes) -> dict:
    """Height, width and mean grey intensity of encoded image bytes (PIL decodes them, as
    ingestion (modules/image_contract.py) does). Raises PIL's errors for bytes that are no image."""
    import io

    import numpy as np
    from PIL import Image
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        grey = np.asarray(image.convert("L"), dtype=np.float32)
        return {IMAGE_HEIGHT: int(image.height), IMAGE_WIDTH: int(image.width),
                IMAGE_MEAN: float(grey.mean() / 255.0) if grey.size else 0.0}


def profile_text(text) -> dict:
    """Word count, share of letters among non-space characters and share of English
    function words of a text (str or UTF-8 bytes)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    words = text.split()
    chars = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    stop = sum(w.strip(".,;:!?\"'()[]<>/-").lower() in _STOPWORDS for w in words)
    return {TEXT_TOKENS: len(words),
            TEXT_ALPHA_RATIO: letters / len(chars) if chars else 0.0,
            TEXT_STOPWORD_RATIO: stop / len(words) if words else 0.0}


def profile(kind: str, raw) -> dict:
    """The profile features of one raw value (image bytes or text) of a pipeline kind."""
    return profile_image(raw) if kind == "image" else profile_text(raw)


def to_example(values: dict):
    """A tf.Example of plain values (int -> int64, float -> float, str/bytes -> bytes): the
    ExampleGens' records and the server's request log are built the same way."""
    import tensorflow as tf

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        if isinstance(value, float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        if isinstance(value, str):
            value = value.encode("utf-8")
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={k: feature(v) for k, v in values.items()}))
