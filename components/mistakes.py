"""The Evaluator's most confident mistakes: the eval examples the candidate got wrong with
the highest probability, written beside TFMA's output so the report never loads a model.

TFMA keeps no per-example predictions, so the Evaluator step calls the candidate's
`serving_examples` signature (the served-model contract, serving/contract.py) on the eval
split once more and keeps the N wrong predictions with the highest top-1 probability:
for images a thumbnail (PNG, at most THUMBNAIL_PX on a side), for text the first
TEXT_CHARS characters. The file is `<evaluation uri>/MISTAKES_FILE`; the ModelEvaluation
artifact records its name and the counts as custom properties (MLMD), see `record`.
"""
import base64
import io
import json
import os
from typing import Any, Dict, List, Sequence

import numpy as np

from modules import features as F
from modules.splits import read_split_examples, split_pattern
from serving import contract

MISTAKES_FILE = "mistakes.json"
MISTAKES_PROPERTY = "mistakes_file"          # custom property of the ModelEvaluation: MISTAKES_FILE
MISTAKES_COUNT_PROPERTY = "mistakes_count"   # int: wrong predictions among the examples scored
SCORED_PROPERTY = "mistakes_scored"          # int: eval examples scored
TOP_N = 12
MAX_EXAMPLES = 20_000   # scoring stops after this many eval examples (a bound on the step's time)
THUMBNAIL_PX = 96
TEXT_CHARS = 300
BATCH = 256


def thumbnail_png_b64(encoded: bytes, size: int = THUMBNAIL_PX) -> str:
    """A PNG data-URI-ready base64 string of an encoded image, shrunk to at most `size` pixels
    on its longer side (grey and RGB kept, other modes converted to RGB)."""
    from PIL import Image
    with Image.open(io.BytesIO(encoded)) as image:
        image = image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode)
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def most_confident_mistakes(model_dir: str, examples_uri: str, class_names: Sequence[str],
                            top_n: int = TOP_N, split: str = "eval") -> Dict[str, Any]:
    """Scores the split with the exported model and keeps its most confident wrong answers.

    Args:
      model_dir: the SavedModel (Model artifact's serving model dir) with the
        `serving_examples` signature (input `examples`: serialized tf.Examples; output
        `probabilities`: float32 [batch, classes]).
      examples_uri: the Examples artifact's uri; its split holds `label` (int64) and
        `image_raw` (encoded image bytes) or `text` (UTF-8).
      class_names: class names in label-index order.
      top_n: how many mistakes to keep.
    Returns:
      {"scored": examples scored (<= MAX_EXAMPLES), "wrong": how many were wrong,
       "kind": "image" | "text" (examples with neither feature: "text" and no content), "mistakes": [{"true": class name, "predicted": class name,
       "probability": top-1 probability in 0..1, "true_probability": probability of the true
       class, "image_png_b64": base64 PNG thumbnail | "text": the first TEXT_CHARS characters}],
       highest probability first}.
    """
    import tensorflow as tf
    signature = tf.saved_model.load(model_dir).signatures[contract.EXAMPLES_SIGNATURE]
    kept: List[Dict[str, Any]] = []
    scored = wrong = 0
    kind = "text"
    batch: List[Any] = []

    def flush() -> None:
        nonlocal scored, wrong
        probs = signature(**{contract.EXAMPLES_INPUT: tf.constant([e.SerializeToString() for e in batch])})
        probs = np.asarray(probs[contract.PROBABILITIES])
        for example, p in zip(batch, probs):
            label = example.features.feature[F.LABEL].int64_list.value[0]
            predicted = int(np.argmax(p))
            scored += 1
            if predicted == label:
                continue
            wrong += 1
            kept.append({"example": example, "label": int(label), "predicted": predicted,
                         "probability": float(p[predicted]), "true_probability": float(p[label])})
        kept.sort(key=lambda m: -m["probability"])
        del kept[top_n:]
        batch.clear()

    for example in read_split_examples(split_pattern(examples_uri, split), limit=MAX_EXAMPLES):
        if not scored and not batch and example.features.feature[F.IMAGE_RAW].bytes_list.value:
            kind = "image"
        batch.append(example)
        if len(batch) == BATCH:
            flush()
    if batch:
        flush()
    out = []
    for m in kept:
        feature = m.pop("example").features.feature
        name = lambda i: class_names[i] if i < len(class_names) else f"class {i}"  # noqa: E731
        entry = {"true": name(m["label"]), "predicted": name(m["predicted"]),
                 "probability": m["probability"], "true_probability": m["true_probability"]}
        if feature[F.IMAGE_RAW].bytes_list.value:
            entry["image_png_b64"] = thumbnail_png_b64(feature[F.IMAGE_RAW].bytes_list.value[0])
        elif feature[F.TEXT].bytes_list.value:
            entry["text"] = feature[F.TEXT].bytes_list.value[0].decode("utf-8", "replace")[:TEXT_CHARS]
        out.append(entry)
    return {"scored": scored, "wrong": wrong, "kind": kind, "mistakes": out}


def record(evaluation, result: Dict[str, Any]) -> str:
    """Writes `result` to `<evaluation.uri>/MISTAKES_FILE` and records the file name and
    counts on the ModelEvaluation artifact (custom properties MISTAKES_PROPERTY,
    MISTAKES_COUNT_PROPERTY, SCORED_PROPERTY). Returns the path written."""
    path = os.path.join(evaluation.uri, MISTAKES_FILE)
    import tensorflow as tf
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(result))
    evaluation.set_string_custom_property(MISTAKES_PROPERTY, MISTAKES_FILE)
    evaluation.set_int_custom_property(MISTAKES_COUNT_PROPERTY, int(result["wrong"]))
    evaluation.set_int_custom_property(SCORED_PROPERTY, int(result["scored"]))
    return path
