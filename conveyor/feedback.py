"""Ground-truth feedback: every prediction's record under a request id, true labels sent
later for those ids, and their join (read by `conveyor monitor` and `conveyor export-feedback`).

With feedback on (`conveyor serve --feedback`), the server gives every Predict a request id
(serving/traffic.py) and calls `FeedbackLog.record` with its PredictionEvent. Labels come back
through `POST /v1/conveyor/models/NAME/feedback` (`FeedbackLog.submit`, or `conveyor feedback
--file labels.csv`), each checked against the answering version's class names.

Layout under HOME/feedback/<model>/ (append-only: a file is never rewritten):
  predictions/predictions-<ms>-<pid>-<n>.jsonl  one JSON object per prediction:
      {"request_id", "model", "version", "arm", "signature", "time",
       "instances": [{"kind": "text"|"image", "text" | "b64", "predicted", "probabilities"}]}
  labels/labels-<ms>-<pid>-<n>.jsonl  one JSON object per accepted label:
      {"request_id", "instance", "label", "received_at"}
Each file is written under a hidden temp name and renamed when complete, so a reader never
sees half a file and a crash loses at most what was not yet renamed. A request id labelled
twice keeps its latest label (`join`); a label is joined with its prediction whichever is
written first.

Why a log of its own rather than the sampled request log: drift needs tf.Examples of a sample
of requests in the training schema (conveyor/request_log.py, unchanged); feedback needs every
prediction, its answer and its version, keyed by an id the client holds.
"""
import base64
import collections
import dataclasses
import datetime
import hmac
import itertools
import json
import logging
import os
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from conveyor.batch_writer import BatchWriter
from serving import contract

log = logging.getLogger("conveyor.serving.feedback")

FEEDBACK_DIR = "feedback"
FEEDBACK_ROUTE = r"/v1/conveyor/models/([^/:]+)/feedback"
PREDICTIONS = "predictions"
LABELS = "labels"
ACCEPTED, UNKNOWN_ID, BAD_LABEL, BAD_INSTANCE = "accepted", "unknown_id", "bad_label", "bad_instance"
MAX_ENTRIES_PER_POST = 10000
SCHEMA_FILE = os.path.join("assets.extra", "conveyor_schema.pbtxt")  # modules/training_schema.py
LABEL_NAME = "label_name"  # modules/features.py LABEL_NAME: the class-name feature


def model_dir(feedback_dir: str, model: str) -> str:
    """<feedback_dir>/<model>: where one model's predictions/ and labels/ live."""
    return os.path.join(feedback_dir, model)


def class_names_of(version_dir: str) -> Optional[List[str]]:
    """The class names a served version was trained on, in class-id order, or None.

    Read from the label_name string domain of the schema the Trainer exports with the model
    (assets.extra/conveyor_schema.pbtxt, modules/training_schema.py tighten_schema).
    """
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    path = os.path.join(version_dir, SCHEMA_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            schema = text_format.Parse(f.read(), schema_pb2.Schema())
    except (OSError, text_format.ParseError):
        return None
    feature = next((f for f in schema.feature if f.name == LABEL_NAME), None)
    if feature is None:
        return None
    if feature.HasField("string_domain"):
        return list(feature.string_domain.value)
    domain = next((d for d in schema.string_domain if d.name == feature.domain), None)
    return list(domain.value) if domain is not None else None


def _write_jsonl(folder: str, prefix: str, rows: List[Dict[str, Any]], counter: Iterator[int]) -> str:
    """Writes rows as one new JSON-lines file (hidden temp name, then rename); returns its path.

    Names sort in writing order within a process: <prefix>-<ms, 13 digits>-<n, 8 digits>-<pid>.
    """
    os.makedirs(folder, exist_ok=True)
    name = f"{prefix}-{int(time.time() * 1000):013d}-{next(counter):08d}-{os.getpid()}.jsonl"
    tmp = os.path.join(folder, f".{name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(folder, name))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return os.path.join(folder, name)


def read_jsonl(folder: str) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(file, object) of every line of the complete .jsonl files in `folder`, oldest file first.

    Raises:
      ValueError: a line is not a JSON object; the message names the file and line.
    """
    if not os.path.isdir(folder):
        return
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".jsonl") and not n.startswith(".")):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{path} line {number}: not JSON ({e})") from e
                if not isinstance(row, dict):
                    raise ValueError(f"{path} line {number}: expected a JSON object")
                yield path, row


def _instances(event) -> List[Dict[str, Any]]:
    """The logged instances of a PredictionEvent: raw input (text, or image bytes as base64)
    plus the predicted class name and probabilities of the served-model contract."""
    from conveyor.request_log import raw_values
    raws = raw_values(event.inputs)
    outputs = event.outputs
    names = np.asarray(outputs.get(contract.CLASS_NAMES, []), dtype=object).reshape(-1)
    probabilities = outputs.get(contract.PROBABILITIES)
    count = max(len(raws), len(names))
    out = []
    for i in range(count):
        row: Dict[str, Any] = {}
        if i < len(raws):
            kind, raw = raws[i]
            row["kind"] = kind
            if kind == "text":
                row["text"] = raw.decode("utf-8", errors="replace")
            else:
                row["b64"] = base64.b64encode(raw).decode("ascii")
        if i < len(names):
            name = names[i]
            row["predicted"] = name.decode("utf-8", errors="replace") if isinstance(name, bytes) else str(name)
        if probabilities is not None and i < len(probabilities):
            row["probabilities"] = [round(float(p), 6) for p in np.asarray(probabilities[i]).reshape(-1)]
        out.append(row)
    return out


@dataclasses.dataclass
class _Issued:
    version: int
    path: str
    instances: int


class FeedbackLog:
    """Records predictions (background thread) and accepts labels for their request ids.

    Args:
      directory: HOME/feedback (or --feedback_dir); <directory>/<model>/... is written.
      token: when non-empty, POSTed labels need `Authorization: Bearer <token>`.
      flush_seconds: a prediction record is on disk at most this long after its answer.
      max_queue: predictions waiting to be written; beyond it they are dropped (their ids then answer
        unknown_id), never slowing a request.
      max_issued: ids kept in memory for validation; older ones are looked up on disk.
    Thread safe. `close()` writes what is queued.
    """

    def __init__(self, directory: str, token: str = "", flush_seconds: float = 1.0,
                 max_queue: int = 10000, max_issued: int = 1_000_000):
        self.directory = os.path.abspath(directory)
        self.token = token
        self.max_issued = max_issued
        self._issued: "collections.OrderedDict[Tuple[str, str], _Issued]" = collections.OrderedDict()
        self._on_disk: Dict[Tuple[str, str], _Issued] = {}
        self._scanned: set = set()
        self._models: set = set()   # models with predictions recorded by this process
        self._classes: Dict[str, Optional[List[str]]] = {}
        self._lock = threading.Lock()
        self._label_lock = threading.Lock()
        self._counter = itertools.count(1)  # file names of this process, thread safe
        self._writer = BatchWriter("feedback log", self._rows, self._write, 512, flush_seconds, max_queue)

    # ---- request threads ------------------------------------------------------------
    def record(self, event) -> None:
        """The server's PredictionHook: remembers the id and queues the record. Never raises."""
        try:
            count = _instance_count(event.inputs)
            key = (event.model, event.request_id)
            with self._lock:
                self._issued[key] = _Issued(int(event.version), event.path, count)
                self._models.add(event.model)
                while len(self._issued) > self.max_issued:
                    self._issued.popitem(last=False)
            if not self._writer.put(event):
                with self._lock:
                    self._issued.pop(key, None)
        except Exception:  # noqa: BLE001 - feedback logging must not fail a request
            log.exception("feedback log: could not record a prediction")

    def route(self, match, headers: Dict[str, str], body: bytes) -> Tuple[int, Any]:
        """The PostRoute of FEEDBACK_ROUTE (serving/rest.py): `submit` for the matched model."""
        import urllib.parse
        return self.submit(urllib.parse.unquote(match.group(1)), headers, body)

    def submit(self, model: str, headers: Dict[str, str], body: bytes) -> Tuple[int, Any]:
        """POST /v1/conveyor/models/MODEL/feedback.

        Args:
          model: the model the predictions were made by.
          headers: the request headers (Authorization is checked when a token is set).
          body: JSON `[{"request_id": str, "label": class name, "instance": int (optional,
            default 0: the instance of a multi-instance request)}, ...]`, at most
            MAX_ENTRIES_PER_POST entries.
        Returns:
          (200, {"results": [{"request_id", "status", ("error")}], "accepted": n}) with status
          per entry, in order: "accepted" (written, joined with its prediction whether or not
          that is flushed yet), "unknown_id" (no prediction of MODEL with that id),
          "bad_instance" (the request had fewer instances), "bad_label" (not one of the
          answering version's class names; the error lists them); (400, {"error"}) for a body
          of another shape; (401, {"error"}) without the token; (404, {"error"}) for a model
          with no logged predictions (not one this server answered).
        """
        if self.token:
            scheme, _, given = next((v for k, v in headers.items() if k.lower() == "authorization"),
                                    "").strip().partition(" ")
            # The auth scheme is case-insensitive (RFC 9110 section 11.1), the token is not.
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                return 401, {"error": "feedback needs the server's token: send the header "
                                      "'Authorization: Bearer <token>' (--feedback_token_env)"}
        if not self._has_predictions(model):
            return 404, {"error": f"no predictions of model '{model}' were logged here: feedback is for "
                                  f"predictions this server answered"}
        try:
            entries = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            return 400, {"error": f"feedback body: not JSON ({e})"}
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            return 400, {"error": 'feedback body: expected a JSON list of {"request_id": ..., "label": ...}'}
        if len(entries) > MAX_ENTRIES_PER_POST:
            return 400, {"error": f"feedback body: {len(entries)} entries, at most {MAX_ENTRIES_PER_POST} per request"}
        for i, entry in enumerate(entries):
            instance = entry.get("instance", 0)
            if (not isinstance(entry.get("request_id"), str) or not isinstance(entry.get("label"), str)
                    or not isinstance(instance, int) or isinstance(instance, bool) or instance < 0):
                return 400, {"error": f"feedback body entry {i}: expected {{\"request_id\": string, "
                                      f"\"label\": string, \"instance\": integer >= 0 (optional)}}, "
                                      f"got {json.dumps(entry)[:200]}"}
        results, rows = [], []
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        for entry in entries:
            request_id, label, instance = entry["request_id"], entry["label"], entry.get("instance", 0)
            issued = self._lookup(model, request_id)
            result = {"request_id": request_id, "status": ACCEPTED}
            if issued is None:
                result["status"] = UNKNOWN_ID
            elif instance >= issued.instances:
                result.update(status=BAD_INSTANCE,
                              error=f"request {request_id} had {issued.instances} instance(s)")
            else:
                names = self._class_names(issued.path)
                if names is not None and label not in names:
                    result.update(status=BAD_LABEL, error=f"'{label}' is not a class of {model} "
                                  f"version {issued.version}: {', '.join(names)}")
                else:
                    rows.append({"request_id": request_id, "instance": instance, "label": label,
                                 "received_at": now})
            results.append(result)
        if rows:
            with self._label_lock:
                _write_jsonl(os.path.join(model_dir(self.directory, model), LABELS), LABELS, rows,
                             self._counter)
        return 200, {"results": results, "accepted": len(rows)}

    def _has_predictions(self, model: str) -> bool:
        with self._lock:
            if model in self._models:
                return True
        return os.path.isdir(os.path.join(model_dir(self.directory, model), PREDICTIONS))

    def _lookup(self, model: str, request_id: str) -> Optional[_Issued]:
        with self._lock:
            issued = self._issued.get((model, request_id)) or self._on_disk.get((model, request_id))
            if issued is not None:
                return issued
            self._scan(model)
            return self._on_disk.get((model, request_id))

    def _scan(self, model: str) -> None:
        """Indexes prediction files of `model` not read yet (other processes' and evicted ids).
        The caller holds self._lock."""
        folder = os.path.join(model_dir(self.directory, model), PREDICTIONS)
        if not os.path.isdir(folder):
            return
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.startswith(".") or not name.endswith(".jsonl") or path in self._scanned:
                continue
            self._scanned.add(path)
            try:
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        row = json.loads(line)
                        self._on_disk[(model, row["request_id"])] = _Issued(
                            int(row["version"]), row.get("path", ""), len(row.get("instances") or []))
            except (OSError, ValueError, KeyError) as e:
                log.warning("feedback log: cannot index %s: %s", path, e)

    def _class_names(self, version_dir: str) -> Optional[List[str]]:
        if version_dir not in self._classes:
            self._classes[version_dir] = class_names_of(version_dir) if version_dir else None
            if self._classes[version_dir] is None:
                log.warning("feedback: no class names found for %s (%s); labels are not checked",
                            version_dir, SCHEMA_FILE)
        return self._classes[version_dir]

    def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued and stops the thread."""
        self._writer.close(timeout)

    # ---- the writer's thread ----------------------------------------------------------
    @staticmethod
    def _rows(event) -> Iterator[Tuple[str, Dict[str, Any]]]:
        """(model, the prediction's JSON row) of a recorded PredictionEvent."""
        yield event.model, {
            "request_id": event.request_id, "model": event.model, "version": int(event.version),
            "arm": event.arm, "signature": event.signature, "path": event.path,
            "time": round(event.time, 3), "instances": _instances(event)}

    def _write(self, model: str, rows: List[Dict[str, Any]]) -> None:
        path = _write_jsonl(os.path.join(model_dir(self.directory, model), PREDICTIONS),
                            PREDICTIONS, rows, self._counter)
        with self._lock:
            self._scanned.add(path)
            for row in rows:
                self._on_disk[(model, row["request_id"])] = _Issued(row["version"], row["path"],
                                                                   len(row["instances"]))


def _instance_count(inputs: Dict[str, Any]) -> int:
    """Instances of a Predict request: the leading dimension of its inputs (1 for a scalar)."""
    for value in inputs.values():
        shape = np.shape(value)
        return int(shape[0]) if shape else 1
    return 0


@dataclasses.dataclass
class LabelledPrediction:
    """One instance of a prediction with its fed-back true label (`join`).

    Fields: request_id, instance; version, arm ("" when no split chose); time (Unix seconds
    of the answer); predicted, label (class names); input (the logged instance: kind and
    "text" or "b64").
    """
    request_id: str
    instance: int
    version: int
    arm: str
    time: float
    predicted: Optional[str]
    label: str
    input: Dict[str, Any]

    @property
    def correct(self) -> bool:
        return self.predicted == self.label


@dataclasses.dataclass
class JoinResult:
    """What `join` read: the labelled predictions plus the counts behind them.

    Fields: labelled (LabelledPrediction list, oldest prediction first); predictions (prediction
    records read); labels (label records read); unmatched_labels (labels whose prediction is
    not on disk, e.g. not flushed yet or dropped).
    """
    labelled: List[LabelledPrediction]
    predictions: int
    labels: int
    unmatched_labels: int


def join(feedback_dir: str, model: str, since: Optional[float] = None) -> JoinResult:
    """Joins `model`'s prediction records with their labels (latest label per request id and
    instance).

    Args:
      feedback_dir: HOME/feedback.
      model: the model name.
      since: only predictions answered at or after this Unix time (None: all).
    Returns:
      The JoinResult.
    Raises:
      ValueError: a record file holds a line that is not a JSON object (file and line named).
    """
    base = model_dir(feedback_dir, model)
    labels: Dict[Tuple[str, int], str] = {}
    label_rows = 0
    for path, row in read_jsonl(os.path.join(base, LABELS)):
        label_rows += 1
        try:
            labels[(row["request_id"], int(row.get("instance", 0)))] = row["label"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: a label record without a valid {e}") from e
    out: List[LabelledPrediction] = []
    predictions, matched = 0, set()
    for path, row in read_jsonl(os.path.join(base, PREDICTIONS)):
        predictions += 1
        try:
            for i, instance in enumerate(row.get("instances") or []):
                key = (row["request_id"], i)
                if key not in labels:
                    continue
                matched.add(key)
                if since is not None and row["time"] < since:
                    continue
                out.append(LabelledPrediction(row["request_id"], i, int(row["version"]), row.get("arm", ""),
                                              float(row["time"]), instance.get("predicted"), labels[key],
                                              {k: v for k, v in instance.items() if k in ("kind", "text", "b64")}))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path}: a prediction record without a valid {e}") from e
    out.sort(key=lambda p: p.time)
    return JoinResult(out, predictions, label_rows, len(set(labels) - matched))


# ---- closing the loop: `conveyor export-feedback` ---------------------------------------------
_TEXT_COLUMNS = ("text", "review", "sentence")     # the text ingestion's defaults (README)
_LABEL_COLUMNS = ("label", "sentiment", "class")
EXPORT_CSV = "feedback.csv"


class ExportError(RuntimeError):
    """Nothing (or nothing usable) to export; the message says why."""


def _image_extension(data: bytes) -> str:
    """.png/.jpg/.gif/.bmp from the image's magic bytes (ingestion reads them by extension)."""
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data[:4] in (b"GIF8",):
        return ".gif"
    if data.startswith(b"BM"):
        return ".bmp"
    return ".png"


def _previous_span(out: str) -> Optional[str]:
    """The span folder before `out`: a sibling with the same name but the highest smaller
    trailing number (incoming/span-3 -> incoming/span-2, or span-1 when 2 is missing)."""
    import re
    parent, name = os.path.split(os.path.abspath(out))
    match = re.fullmatch(r"(.*?)(\d+)", name)
    if not match or not os.path.isdir(parent):
        return None
    prefix, number = match.group(1), int(match.group(2))
    spans = []
    for sibling in os.listdir(parent):
        m = re.fullmatch(re.escape(prefix) + r"(\d+)", sibling)
        if m and int(m.group(1)) < number and os.path.isdir(os.path.join(parent, sibling)):
            spans.append((int(m.group(1)), sibling))
    return os.path.join(parent, max(spans)[1]) if spans else None


def _read_text_span(folder: str) -> List[Tuple[str, str]]:
    """(text, label) rows of the CSV/TSV files of a text span (default column names)."""
    import csv
    rows = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith((".csv", ".tsv")):
            continue
        with open(os.path.join(folder, name), encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if name.endswith(".tsv") else ",")
            fields = reader.fieldnames or []
            text = next((c for c in _TEXT_COLUMNS if c in fields), None)
            label = next((c for c in _LABEL_COLUMNS if c in fields), None)
            if text is None or label is None:
                raise ExportError(f"{os.path.join(folder, name)}: no text/label column "
                                  f"(expected one of {_TEXT_COLUMNS} and one of {_LABEL_COLUMNS})")
            rows += [(r[text], r[label]) for r in reader]
    return rows


def export_span(feedback_dir: str, model: str, out: str, previous: Optional[str] = None,
                since: Optional[float] = None) -> Dict[str, Any]:
    """`conveyor export-feedback`: fed-back predictions as a new span for the next run.

    Images become class folders (<out>/<label>/<request id>-<instance>.<ext>, the bytes as the
    client sent them; pixel requests as the PNG the request log makes of them); texts become
    <out>/feedback.csv with columns text,label. Rule for missing classes: every class of the
    previous span (`previous`, default the sibling span folder with the highest smaller number,
    e.g. incoming/span-2 for incoming/span-3) without a fed-back example gets that span's
    examples of the class, so the data gate's "every class has examples" check passes; a
    class the feedback has is never mixed with old examples. The span is written to a hidden
    temp folder beside `out` and renamed, so a run never reads half a span.

    Args:
      feedback_dir: HOME/feedback.
      model: the model name.
      out: the new span folder; must not exist.
      previous: the span to take missing classes from (None: found as above; none found is
        allowed: nothing is merged).
      since: only predictions answered at or after this Unix time.
    Returns:
      {"out", "kind", "examples": {class: fed-back count}, "merged": {class: count from the
       previous span}, "previous": path or None}.
    Raises:
      ExportError: `out` exists, no labelled prediction, predictions of mixed kinds, or an
        unreadable previous span.
    """
    import csv
    import shutil
    import tempfile
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise ExportError(f"{out} exists; a span is never overwritten: choose a new span folder")
    labelled = join(feedback_dir, model, since).labelled
    if not labelled:
        raise ExportError(f"no labelled predictions of {model} in {feedback_dir} to export")
    kinds = {p.input.get("kind") for p in labelled}
    if len(kinds) != 1 or None in kinds:
        raise ExportError(f"labelled predictions of {model} hold inputs of kinds {sorted(map(str, kinds))}; "
                          "expected all image or all text")
    kind = kinds.pop()
    previous = previous if previous is not None else _previous_span(out)
    counts: Dict[str, int] = collections.Counter(p.label for p in labelled)
    merged: Dict[str, int] = {}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=os.path.dirname(out))
    try:
        if kind == "image":
            for p in labelled:
                data = base64.b64decode(p.input["b64"])
                folder = os.path.join(tmp, p.label)
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, f"{p.request_id}-{p.instance}{_image_extension(data)}"), "wb") as f:
                    f.write(data)
            if previous and os.path.isdir(previous):
                for label in sorted(os.listdir(previous)):
                    source = os.path.join(previous, label)
                    if os.path.isdir(source) and not label.startswith(".") and label not in counts:
                        shutil.copytree(source, os.path.join(tmp, label))
                        merged[label] = len(os.listdir(source))
        else:
            rows = [(p.input.get("text", ""), p.label) for p in labelled]
            if previous and os.path.isdir(previous):
                old = [r for r in _read_text_span(previous) if r[1] not in counts]
                for _, label in old:
                    merged[label] = merged.get(label, 0) + 1
                rows += old
            with open(os.path.join(tmp, EXPORT_CSV), "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["text", "label"])
                writer.writerows(rows)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": out, "kind": kind, "examples": dict(sorted(counts.items())),
            "merged": dict(sorted(merged.items())), "previous": previous}
