"""REST :predict instances for infra validation, built from the eval split's raw examples.

The instances are what a client of the served-model contract sends to `serving_default`
(serving/contract.py): encoded images as {"b64": ...}, texts as plain strings.
"""
import base64
from typing import Any, List, Tuple

from components.errors import InfraInputError
from modules import features
from modules.splits import read_split_examples, split_pattern
from serving import contract

# Training feature -> serving_default input of the served-model contract.
RAW_FEATURES = {features.RAW_INPUT[kind]: contract.SERVING_INPUT[kind] for kind in features.RAW_INPUT}


def read_raw_instances(examples_uri: str, limit: int, split: str = "eval") -> Tuple[str, List[Any]]:
    """Up to `limit` REST instances from the raw feature of one split of an Examples artifact.

    The raw feature is whichever of RAW_FEATURES the first example has; examples with an
    empty value are skipped. Images become {"b64": <base64 of the encoded bytes>}; texts
    become str, or {"b64": ...} when they are not valid UTF-8.

    Args:
      examples_uri: the Examples artifact's uri (files under Split-<split>/*.gz).
      limit: at most this many instances, >= 1.
      split: the split to read.
    Returns:
      (name of the serving_default input, e.g. "images" or "text"; the instances, one per
      example in file order, at least one and at most `limit`).
    Raises:
      InfraInputError: the split has no examples, they have none of RAW_FEATURES, or every
        value of that feature is empty.
    """
    pattern = split_pattern(examples_uri, split, "*.gz")
    feature_name, instances = None, []
    for example in read_split_examples(pattern):
        values = example.features.feature
        if feature_name is None:
            feature_name = next((f for f in RAW_FEATURES if f in values), None)
            if feature_name is None:
                raise InfraInputError(f"{pattern}: examples have none of the raw features "
                                      f"{sorted(RAW_FEATURES)} (got {sorted(values)})")
        raw = values[feature_name].bytes_list.value if feature_name in values else []
        if not raw:
            continue
        instances.append(_instance(feature_name, raw[0]))
        if len(instances) >= limit:
            break
    if feature_name is None:
        raise InfraInputError(f"{pattern}: no {split} examples to build infra validation requests from")
    if not instances:
        raise InfraInputError(f"{pattern}: no example has a non-empty {feature_name!r} feature")
    return RAW_FEATURES[feature_name], instances


def _instance(feature_name: str, value: bytes) -> Any:
    """One row-format instance: TF Serving's REST API takes binary values as {"b64": ...}."""
    if feature_name == features.IMAGE_RAW:
        return {"b64": base64.b64encode(value).decode("ascii")}
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}
