"""`conveyor predict`: classify images or text through TF Serving's standard REST API.

Only documented TF Serving endpoints are used, so this works unchanged against real
TF Serving as well as against `conveyor serve`. Stdlib HTTP keeps it dependency-free.
"""
import argparse
import base64
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from serving import contract


class PredictError(RuntimeError):
    """The server answered with an error; `status` is the HTTP code (0 if unreachable)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


@dataclass
class Prediction:
    """One input's answer: predicted class plus the top-k (class id, probability) pairs."""
    class_name: str
    class_id: int
    probability: float
    top: List[tuple]


class PredictClient:
    """A client of TF Serving's REST API (tensorflow_serving/g3doc/api_rest.md).

    Args:
      url: the server's REST endpoint, e.g. http://127.0.0.1:8501.
      timeout: seconds to wait for connecting and for each read of a call.

    Every call raises PredictError for an HTTP error (`status` = the code, `message` = the
    server's "error") or an unreachable server (`status` 0). A timeout or a reset while
    reading the answer raises OSError; an answer that is not JSON raises ValueError.
    """

    def __init__(self, url: str = "http://127.0.0.1:8501", timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _model_path(self, model: str, version: Optional[int], label: Optional[str]) -> str:
        if version is not None and label:
            raise ValueError("give a version or a label, not both")
        path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label:
            path += f"/labels/{urllib.parse.quote(label, safe='')}"
        return path

    def _call(self, path: str, body: Optional[dict] = None) -> Any:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", errors="replace") or e.reason
            raise PredictError(e.code, message) from None
        except urllib.error.URLError as e:
            raise PredictError(0, f"cannot reach {self.url}: {e.reason}") from None

    def status(self, model: str, version: Optional[int] = None, label: Optional[str] = None) -> dict:
        """GET /v1/models/<model>[/versions/N | /labels/L]: {"model_version_status": [{"version",
        "state" (e.g. LOADING, AVAILABLE, END), "status": {"error_code", "error_message"}}, ...]}."""
        return self._call(self._model_path(model, version, label))

    def metadata(self, model: str, version: Optional[int] = None, label: Optional[str] = None) -> dict:
        """GET /v1/models/<model>[/versions/N | /labels/L]/metadata.

        Args:
          model: the model name.
          version: one version (default: the latest available); not with `label`.
          label: a version label; not with `version`.
        Returns:
          {"model_spec": {"name", "version", ...}, "metadata": {"signature_def":
          {"signature_def": {name: {"inputs", "outputs", "method_name"}}}}} as TF Serving
          answers it (api_rest.md "Model Metadata API").
        Raises:
          ValueError: both `version` and `label`.
          PredictError: an HTTP error or an unreachable server (see the class).
        """
        return self._call(self._model_path(model, version, label) + "/metadata")

    def predict(self, model: str, instances: List[Any], version: Optional[int] = None,
                label: Optional[str] = None, signature_name: str = "") -> List[Dict[str, Any]]:
        """Raw row-format predict: returns the `predictions` list (KeyError or TypeError if
        the answer is JSON without one)."""
        body: Dict[str, Any] = {"instances": instances}
        if signature_name:
            body["signature_name"] = signature_name
        return self._call(self._model_path(model, version, label) + ":predict", body)["predictions"]

    def predict_images(self, model: str, images: Sequence[bytes], top_k: int = 3,
                       **kwargs: Any) -> List[Prediction]:
        """Classifies encoded images with a Conveyor image model (sent as {"b64": ...}).

        Args:
          model: the model name.
          images: encoded image files (PNG/JPEG/... bytes), one prediction each.
          top_k: how many (class id, probability) pairs each Prediction keeps, best first.
          **kwargs: version / label / signature_name, as for `predict`.
        Returns:
          One Prediction per image, in order.
        Raises:
          PredictError: an HTTP error, an unreachable server, or an answer without the
            model contract's probabilities output (status 200: not a Conveyor model).
        """
        instances = [{"b64": base64.b64encode(image).decode("ascii")} for image in images]
        return _summarize(self.predict(model, instances, **kwargs), top_k)

    def predict_texts(self, model: str, texts: Sequence[str], top_k: int = 3,
                      **kwargs: Any) -> List[Prediction]:
        """Classifies raw texts with a Conveyor text model (sent as JSON strings).

        Args:
          model: the model name.
          texts: the texts, one prediction each.
          top_k: how many (class id, probability) pairs each Prediction keeps, best first.
          **kwargs: version / label / signature_name, as for `predict`.
        Returns:
          One Prediction per text, in order.
        Raises:
          PredictError: an HTTP error, an unreachable server, or an answer without the
            model contract's probabilities output (status 200: not a Conveyor model).
        """
        return _summarize(self.predict(model, list(texts), **kwargs), top_k)


def _summarize(predictions: List[Dict[str, Any]], top_k: int) -> List[Prediction]:
    results = []
    for row in predictions:
        if not isinstance(row, dict) or contract.PROBABILITIES not in row:
            raise PredictError(200, f"response lacks the '{contract.PROBABILITIES}' output; "
                                    "is this a Conveyor model?")
        probabilities = row[contract.PROBABILITIES]
        ranked = sorted(enumerate(probabilities), key=lambda p: p[1], reverse=True)[:top_k]
        class_id = int(row.get(contract.CLASS_IDS, ranked[0][0]))
        results.append(Prediction(class_name=str(row.get(contract.CLASS_NAMES, class_id)), class_id=class_id,
                                  probability=float(probabilities[class_id]), top=ranked))
    return results


def format_prediction(source: str, prediction: Prediction) -> str:
    """'cat.png: cat (0.912)  top: cat 0.912, #2 0.061, #0 0.027'; only the predicted
    class has a name because the model's class_names output names the argmax only."""
    top = ", ".join(
        f"{prediction.class_name if i == prediction.class_id else f'#{i}'} {p:.3f}"
        for i, p in prediction.top)
    return f"{source}: {prediction.class_name} ({prediction.probability:.3f})  top: {top}"


_SERVED_MAGIC = (b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")


def read_image_file(path: str) -> bytes:
    """A file's bytes in a format every Conveyor model decodes, PNG for anything else.

    Files the exported graph decodes (PNG, GIF, grey or RGB JPEG, 24-bit BMP; the contract is
    modules/image_contract.py) are sent as they are, so the server sees the pixels ingestion
    trained on. Any other file PIL reads (WebP, TIFF, CMYK JPEG, palette or 1-bit BMP, ...)
    becomes an 8-bit grey or RGB PNG of its first frame with ingestion's mapping: 1-bit and
    grey to grey, 16-bit grey to its high byte, palette/CMYK/YCbCr to RGB, alpha dropped.

    Raises:
      OSError: unreadable file, or one PIL cannot read or map (the message names the path).
    """
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(_SERVED_MAGIC) or (
            data[:2] == b"BM" and data[28:30] == b"\x18\x00" and data[14:18] in (b"(\0\0\0", b"l\0\0\0", b"|\0\0\0")):
        return data
    import io

    import numpy as np
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format == "JPEG" and image.mode in ("L", "RGB"):
                return data
            if image.mode in ("1", "L"):
                pixels = np.asarray(image.convert("L"))
            elif image.mode in ("LA", "La"):
                pixels = np.asarray(image.getchannel(0))
            elif image.mode.startswith("I;16"):
                pixels = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
            elif image.mode in ("I", "F"):
                raise ValueError(f"pixel mode {image.mode} has no defined 8-bit mapping")
            else:
                pixels = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:  # its message names PIL's in-memory buffer, not the file
        raise OSError(f"{path}: not an image Conveyor can send (no image format PIL reads)") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure: name the file
        raise OSError(f"{path}: not an image Conveyor can send ({type(e).__name__}: {e})") from None
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _name_instance(error: PredictError, files: Sequence[str]) -> str:
    """The server's "Input 'images' instance 3: ..." with the file sent as instance 3 named."""
    match = re.match(r"Input '[^']*' instance (\d+): ", error.message)
    if not match or int(match.group(1)) >= len(files):
        return str(error)
    return f"HTTP {error.status}: {files[int(match.group(1))]}: {error.message[match.end():]}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="conveyor predict",
        description="Classify images or text with a served model (TF Serving REST API).")
    parser.add_argument("--model", required=True, help="model name, e.g. image or text")
    parser.add_argument("--url", default="http://127.0.0.1:8501", help="REST endpoint of the server")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="model version (default: latest)")
    which.add_argument("--label", help="version label, e.g. stable or canary")
    parser.add_argument("--signature_name", default="", help="default: serving_default")
    parser.add_argument("--top_k", type=int, default=3)
    parser.add_argument("--text", action="append", default=[], help="text to classify (repeatable)")
    parser.add_argument("files", nargs="*", help="image files to classify (any format PIL reads; "
                                                 "non-served formats are sent as PNG)")
    args = parser.parse_args(argv)
    if bool(args.files) == bool(args.text):
        parser.error("give image FILES or --text, not both and not neither")
    client = PredictClient(args.url)
    options = dict(version=args.version, label=args.label, signature_name=args.signature_name,
                   top_k=args.top_k)
    try:
        if args.files:
            images = [read_image_file(path) for path in args.files]
            results = client.predict_images(args.model, images, **options)
            sources = args.files
        else:
            results = client.predict_texts(args.model, args.text, **options)
            sources = [repr(t if len(t) <= 40 else t[:37] + "...") for t in args.text]
    except PredictError as e:
        print(f"conveyor predict: {_name_instance(e, args.files)}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"conveyor predict: {e}", file=sys.stderr)
        return 1
    for source, result in zip(sources, results):
        print(format_prediction(source, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
