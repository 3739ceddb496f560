"""The served-model contract: what a Conveyor model exports and what its clients rely on.

One home for the names that the Trainer's export, the Evaluator (TFMA), the infra validator,
the server and the client must agree on. The Trainer's export (modules/trainer.py) conforms
to it; `serving/testing.py` builds tiny models with the same contract for tests.

Signatures of an exported Conveyor model:
  * DEFAULT_SIGNATURE (`serving_default`): input SERVING_INPUT[kind], a string tensor [N]
    of encoded image bytes (kind "image") or raw UTF-8 texts (kind "text");
  * EXAMPLES_SIGNATURE (`serving_examples`): input EXAMPLES_INPUT, serialized tf.Examples [N]
    (what TFMA feeds).
Both return OUTPUTS:
  * PROBABILITIES: float32 [N, num_classes], rows sum to 1;
  * CLASS_IDS: int64 [N], the argmax;
  * CLASS_NAMES: string [N], the name of the argmax class.

serving/ imports nothing outside serving/ (the server is a standalone TF Serving clone).
"""
import os

DEFAULT_SIGNATURE = "serving_default"   # TF Serving's default signature key
EXAMPLES_SIGNATURE = "serving_examples"
EXAMPLES_INPUT = "examples"
# Name of the serving_default input per model kind, as clients send it.
SERVING_INPUT = {"image": "images", "text": "text"}

PROBABILITIES = "probabilities"
CLASS_IDS = "class_ids"
CLASS_NAMES = "class_names"
OUTPUTS = (PROBABILITIES, CLASS_IDS, CLASS_NAMES)

# TF Serving replays this file (PredictionLog TFRecord) before marking a version AVAILABLE
# (tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc: kSavedModelWarmupFile...).
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
