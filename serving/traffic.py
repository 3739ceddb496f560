"""A/B traffic split between a model's `stable` and `canary` versions, and the request ids of
ground-truth feedback (Conveyor extensions, `--ab_split`; nothing here changes an answer of TF
Serving's API, only adds response headers / metadata).

TF Serving sends a request without a version or label to the highest loaded version. With
`--ab_split canary=P`, an unversioned Predict of a model whose `canary` and `stable` labels
(serving/model_config.py) both name loaded versions goes to the canary with probability P and
to stable otherwise; requests naming a version or a label are never rerouted. A request that
carries a unit key (REST header `X-Conveyor-Unit`, gRPC metadata `x-conveyor-unit`, e.g. a
user id) is sticky: its arm is a hash of (model, key), so one unit always sees one arm for a
given P, across requests, server restarts and worker processes. Without a key each request
draws at random.
"""
import hashlib
import random
import uuid
from typing import Dict, Iterable, Optional

UNIT_HEADER = "X-Conveyor-Unit"
UNIT_METADATA = "x-conveyor-unit"            # gRPC metadata keys are lower case
VERSION_HEADER = "X-Conveyor-Version"        # REST: the version that answered
ARM_HEADER = "X-Conveyor-Arm"                # REST: "stable" / "canary" when the split chose
ARM_METADATA = "x-conveyor-arm"
REQUEST_ID_HEADER = "X-Conveyor-Request-Id"  # with feedback on: the id to send labels for
REQUEST_ID_METADATA = "x-conveyor-request-id"
_ALL_MODELS = ""


class SplitError(ValueError):
    """A malformed --ab_split value; the message quotes it and says what was expected."""


def parse_ab_split(specs: Iterable[str]) -> Dict[str, float]:
    """--ab_split values -> {model name, or "" for every model: canary share}.

    Args:
      specs: each "canary=P" (every model) or "MODEL:canary=P", P a number in 0..1; a
        model-specific value wins over the one for every model; later values win.
    Returns:
      {model or "": P}.
    Raises:
      SplitError: a value of another form or a share outside 0..1.
    """
    shares: Dict[str, float] = {}
    for spec in specs:
        model, _, rest = spec.rpartition(":")
        arm, sep, value = rest.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if arm.strip() != "canary" or not sep or not 0.0 <= share <= 1.0:
            raise SplitError(f"--ab_split {spec!r}: expected canary=P or MODEL:canary=P with P in 0..1")
        shares[model.strip()] = share
    return shares


class TrafficSplit:
    """The canary share of each model and how a request draws its arm. Thread safe.

    Args:
      shares: parse_ab_split's {model or "": canary share}.
    """

    def __init__(self, shares: Dict[str, float]):
        self.shares = dict(shares)

    def share(self, model: str) -> Optional[float]:
        """The canary share of `model` (its own, else the every-model one), None = no split."""
        return self.shares.get(model, self.shares.get(_ALL_MODELS))

    @staticmethod
    def draw(model: str, unit: Optional[str]) -> float:
        """A number in [0, 1): the first 64 bits of BLAKE2b(model NUL unit) over 2^64 when a
        unit key is given (the same for the same key, everywhere), else random.random()."""
        if not unit:
            return random.random()
        digest = hashlib.blake2b(f"{model}\0{unit}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0 ** 64


def new_request_id() -> str:
    """A request id: 32 lower-case hex digits (a random UUID4)."""
    return uuid.uuid4().hex
