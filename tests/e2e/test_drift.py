"""Request logging and `conveyor drift` (issue 7, "Drift and skew").

A real pushed model (one real first run per kind) is served by the real server subprocess
with --request_log_rate 1.0; requests drawn from the training distribution give no drift
(exit 0), shifted ones (inverted digits; German/French texts for an English model) give a
drift anomaly on the profile feature that moved (exit 1), recorded for the report.
"""
import base64
import csv
import io
import json
import os

import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image

from conveyor import cli
from conveyor.request_log import log_files
from tests.support.helpers import SHARED_DATA, TEXT_REVIEWS, pushed_first_run, subset_digits
from tests.support.serving_harness import ServerProcess

IMDB_CSV = os.path.join(SHARED_DATA, "imdb", "imdb_reviews_2500.csv")
DRIFT_JSON_KEYS = ["model", "version", "kind", "checked_at", "requests", "request_files", "training_examples",
                   "training_statistics", "schema", "threshold", "js_divergence", "drift", "anomalies", "path"]

# Short texts in other languages: what an English sentiment model should not be served.
FOREIGN = [
    "Der Film war wirklich großartig und die Schauspieler haben mich überzeugt.",
    "Ich habe mich selten so gelangweilt, die Handlung ist völlig vorhersehbar.",
    "Eine wunderbare Geschichte über Freundschaft, Mut und Hoffnung.",
    "Leider ist die Musik viel zu laut und die Dialoge wirken hölzern.",
    "Meine Kinder wollten den Film sofort noch einmal sehen.",
    "Nach zwanzig Minuten bin ich eingeschlafen, schade um das Geld.",
    "Die Kamera fängt die Landschaft Islands in atemberaubenden Bildern ein.",
    "Ein mittelmäßiger Krimi mit einem überraschend guten Ende.",
    "Warum dieser Film so gelobt wird, bleibt mir ein Rätsel.",
    "Die Hauptdarstellerin spielt hervorragend, jede Szene lebt durch sie.",
    "Viel zu lang, viel zu laut und leider auch ziemlich dumm.",
    "Ein Meisterwerk des deutschen Kinos, unbedingt ansehen!",
    "Die Fortsetzung kommt an das Original leider nicht heran.",
    "Spannend von der ersten bis zur letzten Minute.",
    "Das Drehbuch wirkt unfertig und die Figuren bleiben blass.",
    "Ein herrlich komischer Abend mit Freunden im Kino.",
    "Le film est magnifique, les acteurs sont touchants et sincères.",
    "Je me suis ennuyé du début à la fin, quelle déception.",
    "Une histoire émouvante portée par une musique sublime.",
    "Les dialogues sonnent faux et le scénario manque de rythme.",
    "Mes enfants ont adoré chaque minute de ce dessin animé.",
    "Un polar efficace, mais la fin est beaucoup trop prévisible.",
    "La photographie est superbe, chaque plan ressemble à un tableau.",
    "Trop long, trop bruyant, et franchement pas très drôle.",
    "Un chef-d'œuvre du cinéma français, à voir absolument.",
    "La suite ne retrouve jamais la magie du premier épisode.",
    "Quelle surprise, je ne m'attendais pas à rire autant.",
    "Les personnages sont creux et l'intrigue tourne en rond.",
    "Une réalisation soignée et des comédiens formidables.",
    "Je recommande ce film à tous les amateurs de science-fiction.",
    "Der Regisseur verschenkt eine gute Idee an eine schwache Umsetzung.",
    "Wunderschön erzählt, ich musste am Ende sogar weinen.",
    "Un navet sans intérêt, j'ai quitté la salle avant la fin.",
    "Die Effekte sind beeindruckend, die Geschichte dagegen dünn.",
    "Une comédie légère et rafraîchissante pour tout public.",
    "Ein Film, den man nicht so schnell vergisst.",
]


def _serve_and_send(home: str, model: str, log_dir: str, bodies, log_path: str) -> None:
    """Serves HOME with every request logged, sends the bodies, stops (flushing the log)."""
    server = ServerProcess(["--home", home, "--request_log_rate", "1.0", "--request_log_dir", log_dir], log_path,
                           entry=["-m", "conveyor.cli", "serve"])  # request logging is conveyor serve's
    try:
        server.wait_ready(model)
        for body in bodies:
            response = requests.post(f"{server.url}/v1/models/{model}:predict", json=body, timeout=30)
            assert response.status_code == 200, response.text
    finally:
        server.stop()


def _drift(home: str, model: str, log_dir: str, capsys):
    # 36..60 logged requests here: below the default minimum sample of 200, so it is lowered.
    code = cli.main(["drift", "--model", model, "--home", home, "--request-log-dir", log_dir, "--json",
                     "--min-requests", "30"])
    return code, json.loads(capsys.readouterr().out)


def _logged_examples(log_dir: str, model: str):
    files = log_files(os.path.join(log_dir, model, "1"))
    assert files and not [f for f in os.listdir(os.path.dirname(files[0])) if f.startswith(".")]
    return [tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(files).as_numpy_iterator()]


@pytest.fixture(scope="module")
def image_home(tmp_path_factory, digits_dir):
    root = tmp_path_factory.mktemp("image_drift")
    data = subset_digits(digits_dir, str(root / "digits"), per_class=30)
    home = str(root / "home")
    pushed_first_run("image", data, home)
    return home


def _digit_bodies(digits_dir: str, invert: bool):
    """Held-out digits (not among the 30 per class trained on), 4 instances per request."""
    instances = []
    for label in sorted(os.listdir(digits_dir)):
        for name in sorted(os.listdir(os.path.join(digits_dir, label)))[40:46]:
            with Image.open(os.path.join(digits_dir, label, name)) as image:
                pixels = np.asarray(image.convert("L"))
            buffer = io.BytesIO()
            Image.fromarray(255 - pixels if invert else pixels).save(buffer, format="PNG")
            instances.append({"b64": base64.b64encode(buffer.getvalue()).decode()})
    return [{"instances": instances[i:i + 4]} for i in range(0, len(instances), 4)]


def test_requests_like_training_data_show_no_drift(image_home, digits_dir, tmp_path, capsys):
    log_dir = str(tmp_path / "logs")
    _serve_and_send(image_home, "image_classifier", log_dir, _digit_bodies(digits_dir, False),
                    str(tmp_path / "server.log"))
    examples = _logged_examples(log_dir, "image_classifier")
    assert len(examples) == 60
    feature = examples[0].features.feature
    assert feature["image_height"].int64_list.value == [8] and feature["image_raw"].bytes_list.value
    assert 0.0 < feature["image_mean"].float_list.value[0] < 1.0 and "label" not in feature
    code, record = _drift(image_home, "image_classifier", log_dir, capsys)
    assert code == 0 and record["anomalies"] == [], record
    assert list(record) == DRIFT_JSON_KEYS  # scripts read `conveyor drift --json`: keys and order are pinned
    assert record["version"] == "1" and record["requests"] == 60
    assert record["js_divergence"]["image_mean"] < record["threshold"]


def test_inverted_images_drift_on_image_mean(image_home, digits_dir, tmp_path, capsys):
    log_dir = str(tmp_path / "logs")
    _serve_and_send(image_home, "image_classifier", log_dir, _digit_bodies(digits_dir, True),
                    str(tmp_path / "server.log"))
    code, record = _drift(image_home, "image_classifier", log_dir, capsys)
    assert code == 1, record
    assert [a["feature"] for a in record["anomalies"]] == ["image_mean"], record
    assert [list(a) for a in record["anomalies"]] == [["feature", "anomaly", "description"]]
    assert "Jensen-Shannon divergence" in record["anomalies"][0]["description"]
    with open(os.path.join(image_home, "drift", "image_classifier-1.json"), encoding="utf-8") as f:
        written = json.load(f)
    assert written["drift"] is True and list(written) == DRIFT_JSON_KEYS[:-1]  # the file has no "path"
    from conveyor import report
    from conveyor.metadata.store import open_store
    html = report.render(open_store(image_home), "image_classifier", home=image_home)
    assert 'id="drift">DRIFT<' in html and "image_mean" in html


def test_pixel_requests_answer_like_bytes_over_rest_and_grpc_and_are_logged(image_home, digits_dir, tmp_path):
    """The course's request form: float pixel arrays on serving_pixels (issue 19)."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from modules.preprocessing import decode_images
    pngs = [base64.b64decode(instance["b64"])
            for body in _digit_bodies(digits_dir, False)[:2] for instance in body["instances"]]
    pixels = decode_images(tf.constant(pngs), 28, 1).numpy()  # what serving_default computes
    assert pixels.shape == (8, 28, 28, 1)
    log_dir = str(tmp_path / "logs")
    server = ServerProcess(["--home", image_home, "--request_log_rate", "1.0", "--request_log_dir", log_dir],
                           str(tmp_path / "server.log"), entry=["-m", "conveyor.cli", "serve"])
    url = f"{server.url}/v1/models/image_classifier:predict"
    try:
        server.wait_ready("image_classifier")
        by_bytes = requests.post(url, json={"instances": [{"b64": base64.b64encode(p).decode()} for p in pngs]},
                                 timeout=30).json()["predictions"]
        response = requests.post(url, json={"signature_name": "serving_pixels", "instances": pixels.tolist()},
                                 timeout=30)
        assert response.status_code == 200, response.text
        by_pixels = response.json()["predictions"]
        assert [p["class_names"] for p in by_pixels] == [p["class_names"] for p in by_bytes]
        np.testing.assert_allclose([p["probabilities"] for p in by_pixels],
                                   [p["probabilities"] for p in by_bytes], atol=1e-5)

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "image_classifier"
        request.model_spec.signature_name = "serving_pixels"
        request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(pixels))
        with grpc.insecure_channel(server.grpc_target) as channel:
            reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        np.testing.assert_allclose(tf.make_ndarray(reply.outputs["probabilities"]),
                                   [p["probabilities"] for p in by_bytes], atol=1e-5)

        unscaled = requests.post(url, json={"signature_name": "serving_pixels",
                                            "instances": (pixels * 255).tolist()}, timeout=30)
        assert unscaled.status_code == 400, unscaled.text
        # One line: the signature's own message, without TF's condition dump or node names.
        assert unscaled.json()["error"].endswith(
            "serving input pixels: expected float pixels in [0, 1] (divide 8-bit values by 255)"), unscaled.text
        wrong_size = requests.post(url, json={"signature_name": "serving_pixels",
                                              "instances": pixels[:, :8, :8].tolist()}, timeout=30)
        assert wrong_size.status_code == 400, wrong_size.text
        assert "serving input pixels: expected shape [N, 28, 28, 1], got [8 8 8 1]" in wrong_size.text
        assert "node" not in wrong_size.text and "Incompatible" not in wrong_size.text, wrong_size.text
        wrong_rank = requests.post(url, json={"signature_name": "serving_pixels",
                                              "instances": pixels[:, :, :, 0].tolist()}, timeout=30)
        assert wrong_rank.status_code == 400, wrong_rank.text
        assert "serving input pixels: expected shape [N, 28, 28, 1], got [8 28 28]" in wrong_rank.text
        assert "node" not in wrong_rank.text and "Incompatible" not in wrong_rank.text, wrong_rank.text
    finally:
        server.stop()
    examples = _logged_examples(log_dir, "image_classifier")
    assert len(examples) == 24  # 8 as bytes, 8 as REST pixels, 8 as gRPC pixels; refused requests are not logged
    logged_pixels = [e.features.feature for e in examples if e.features.feature["image_height"].int64_list.value == [28]]
    assert len(logged_pixels) == 16  # pixel requests are logged as the PNG of the model-size pixels
    means = sorted(f["image_mean"].float_list.value[0] for f in logged_pixels[:8])
    np.testing.assert_allclose(means, sorted(pixels.mean(axis=(1, 2, 3))), atol=1 / 255)


def test_no_logged_requests_is_a_clear_error(image_home, tmp_path, capsys):
    code = cli.main(["drift", "--model", "image_classifier", "--home", image_home,
                     "--request-log-dir", str(tmp_path / "none")])
    assert code == 2
    assert "no logged requests of image_classifier version 1" in capsys.readouterr().err


def test_too_few_or_unreadable_requests_give_no_verdict(image_home, digits_dir, tmp_path, capsys):
    """Issue 23: one normal request used to score Jensen-Shannon 1.0 (DRIFT, exit 1); below
    the minimum sample, and on zero examples read for any reason, the answer is exit 2."""
    from conveyor.request_log import RequestLogger
    log_dir = str(tmp_path / "logs")
    pngs = [base64.b64decode(i["b64"]) for i in _digit_bodies(digits_dir, False)[0]["instances"]]
    logger = RequestLogger(log_dir, 1.0)
    logger.log("image_classifier", 1, {"images": np.array(pngs[:1], dtype=object)})
    logger.close()
    args = ["drift", "--model", "image_classifier", "--home", image_home, "--request-log-dir", log_dir]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "not enough requests: 1 logged request(s) of image_classifier version 1" in err, err
    assert "need at least 200 (drift_min_requests)" in err, err

    folder = os.path.join(log_dir, "image_classifier", "1")
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    open(os.path.join(folder, "requests-1-1-1.tfrecord"), "wb").close()  # empty: zero examples
    assert cli.main(args + ["--min-requests", "1"]) == 2
    assert "0 requests read from the 1 request log file(s)" in capsys.readouterr().err
    with open(os.path.join(folder, "requests-1-1-2.tfrecord"), "wb") as f:
        f.write(b"not a tfrecord at all, just bytes")
    assert cli.main(args + ["--min-requests", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the request log" in err and "requests-1-1-2.tfrecord" in err, err


@pytest.mark.skipif(not os.path.exists(IMDB_CSV), reason="shared IMDB reviews not available")
def test_english_vs_foreign_texts(tmp_path_factory, tmp_path, capsys):
    with open(IMDB_CSV, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    root = tmp_path_factory.mktemp("text_drift")
    os.makedirs(root / "reviews")
    with open(root / "reviews" / "reviews.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows([r["review"], r["sentiment"]] for r in rows[:TEXT_REVIEWS])
    home = str(root / "home")
    pushed_first_run("text", str(root / "reviews"), home)

    english = str(tmp_path / "english")
    held_out = [r["review"] for r in rows[1000:1060]]
    _serve_and_send(home, "text_classifier", english,
                    [{"instances": held_out[i:i + 4]} for i in range(0, len(held_out), 4)],
                    str(tmp_path / "server-en.log"))
    code, record = _drift(home, "text_classifier", english, capsys)
    assert code == 0 and record["anomalies"] == [], record

    foreign = str(tmp_path / "foreign")
    _serve_and_send(home, "text_classifier", foreign,
                    [{"instances": FOREIGN[i:i + 4]} for i in range(0, len(FOREIGN), 4)],
                    str(tmp_path / "server-xx.log"))
    code, record = _drift(home, "text_classifier", foreign, capsys)
    assert code == 1, record
    assert "text_stopword_ratio" in [a["feature"] for a in record["anomalies"]], record
