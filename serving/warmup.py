"""Writes and replays TF Serving warmup requests (assets.extra/tf_serving_warmup_requests).

The file is a TFRecord of `tensorflow.serving.PredictionLog` protos, exactly what
real TF Serving replays before marking a version AVAILABLE, so the Trainer writes it
once and both servers use it.
"""
import os
from typing import Callable, Dict, List, Sequence, Union

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving.contract import DEFAULT_SIGNATURE, WARMUP_FILE
# TF Serving refuses warmup files with more records than this.
MAX_WARMUP_RECORDS = 1000


def write_warmup_requests(saved_model_dir: str,
                          requests: Sequence[Dict[str, Union[np.ndarray, list]]],
                          signature_name: str = DEFAULT_SIGNATURE,
                          model_name: str = "model") -> str:
    """Writes one PredictLog per request dict ({input name: batch}); returns the file path.

    String inputs must be bytes (e.g. encoded PNG) or str; each value keeps its batch
    dimension, e.g. {"images": [png_bytes]}.
    """
    if not requests:
        raise ValueError("write_warmup_requests needs at least one request")
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(f"TF Serving replays at most {MAX_WARMUP_RECORDS} warmup requests, "
                         f"got {len(requests)}")
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature_name
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(saved_model_dir: str) -> List[predict_pb2.PredictRequest]:
    """The PredictRequests in a version's warmup file ([] when it has none)."""
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    if not os.path.exists(path):
        return []
    requests = []
    for i, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
        if i >= MAX_WARMUP_RECORDS:
            raise ValueError(f"{path}: more than {MAX_WARMUP_RECORDS} warmup records")
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"{path}: record {i} is a {log.WhichOneof('log_type')}; "
                             "Conveyor's server only replays predict_log warmup records")
        requests.append(log.predict_log.request)
    return requests


def replay_warmup_requests(saved_model_dir: str,
                           run: Callable[[str, Dict[str, np.ndarray]], Dict[str, np.ndarray]]) -> int:
    """Runs every warmup request through `run(signature_name, inputs)`; returns how many.

    Any failure propagates, so (as in TF Serving) a version whose warmup fails is not loaded.
    """
    requests = read_warmup_requests(saved_model_dir)
    for request in requests:
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        run(request.model_spec.signature_name, inputs)
    return len(requests)
