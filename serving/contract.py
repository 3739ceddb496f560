"""The served-model contract: what a Conveyor model exports and what its clients rely on.

One home for the names that the Trainer's export, the Evaluator (TFMA), the infra validator,
the server and the client must agree on. The Trainer's export (modules/trainer.py) conforms
to it; `serving/testing.py` builds tiny models with the same contract for tests.

Signatures of an exported Conveyor model:
  * DEFAULT_SIGNATURE (`serving_default`): input SERVING_INPUT[kind], a string tensor [N]
    of encoded image bytes (kind "image") or raw UTF-8 texts (kind "text");
  * EXAMPLES_SIGNATURE (`serving_examples`): input EXAMPLES_INPUT, serialized tf.Examples [N]
    (what TFMA feeds);
  * PIXELS_SIGNATURE (`serving_pixels`, image models only): input PIXELS_INPUT, float32
    [N, image_size, image_size, channels] in [0, 1] -- the decoded, resized pixels that
    serving_default computes from image bytes, as the course's TF Serving example sends
    (`{"signature_name": "serving_pixels", "instances": test_images[0:3].tolist()}`).
All return OUTPUTS:
  * PROBABILITIES: float32 [N, num_classes], rows sum to 1;
  * CLASS_IDS: int64 [N], the argmax;
  * CLASS_NAMES: string [N], the name of the argmax class.

serving/ imports nothing outside serving/ (the server is a standalone TF Serving clone).
"""
import os

DEFAULT_SIGNATURE = "serving_default"   # TF Serving's default signature key
EXAMPLES_SIGNATURE = "serving_examples"
EXAMPLES_INPUT = "examples"
PIXELS_SIGNATURE = "serving_pixels"
PIXELS_INPUT = "pixels"
# Name of the serving_default input per model kind, as clients send it.
SERVING_INPUT = {"image": "images", "text": "text"}

PROBABILITIES = "probabilities"
CLASS_IDS = "class_ids"
CLASS_NAMES = "class_names"
OUTPUTS = (PROBABILITIES, CLASS_IDS, CLASS_NAMES)

# TF Serving replays this file (PredictionLog TFRecord) before marking a version AVAILABLE
# (tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc: kSavedModelWarmupFile...).
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

# An encoded image Conveyor accepts (modules/image_contract.py is the whole rule): the formats
# an exported image model decodes, and the most pixels one image may have. The limit is PIL's
# decompression-bomb threshold (PIL.Image.MAX_IMAGE_PIXELS, 1024**3 // 4 // 3, about 0.25 GB
# of 24-bit pixels); ingestion and the server refuse larger images with the same message
# (serving/images.py `over_limit`).
SERVED_IMAGE_FORMATS = "PNG, JPEG (grey or RGB), GIF (first frame) or 24-bit BMP"
MAX_IMAGE_PIXELS = 89_478_485
