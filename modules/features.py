"""Feature names shared by the ExampleGens, Transform, Trainer and serving signatures."""
LABEL = "label"              # int64 index into the sorted class names
LABEL_NAME = "label_name"    # the class name itself
IMAGE_RAW = "image_raw"      # encoded PNG/JPEG bytes
TEXT = "text"                # raw review / sentence
IMAGE = "image"              # transformed: float32 [size, size, channels] in [0, 1]
TOKENS = "tokens"            # transformed: int64 [max_tokens] vocabulary ids, 0 = padding
MULTI_HOT = "multi_hot"      # transformed: float32 [vocab + oov] bag of words

RAW_INPUT = {"image": IMAGE_RAW, "text": TEXT}
# Names of the serving_default input per kind, as clients send them.
SERVING_INPUT = {"image": "images", "text": "text"}
