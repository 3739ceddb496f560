"""Schema drift on a second run is stopped by the gate (issue 7, "Bad data").

One real first run per kind (image: 300 real digits; text: 150 real IMDB reviews) pushes
version 1 with the schema it trained with. Each second run feeds drifted data; the
GatedExampleValidator must stop it before Transform with a message naming the anomaly and
feature, no Trainer runs (MLMD), and serving still holds only version 1.
"""
import csv
import io
import os
import shutil

import pytest
from PIL import Image

from conveyor.metadata.lineage import pushed_models
from conveyor.metadata.store import Graph, open_store
from pipelines.config import load_config
from conveyor import runner as local_runner
from pipelines import local_runner as dag_runner
from pipelines.metadata_connection import MetadataConnectionError
from tests.support.helpers import SHARED_DATA, TEXT_REVIEWS, pushed_first_run

PER_CLASS = 30
IMDB_CSV = os.path.join(SHARED_DATA, "imdb", "imdb_reviews_2500.csv")


def _digits_subset(digits_dir: str, target: str, size: int = 8, skip_class=None, extra_class=None) -> str:
    """PER_CLASS real digits per class, optionally resized, without a class or with a new one."""
    for label in sorted(os.listdir(digits_dir)):
        if label == skip_class:
            continue
        os.makedirs(os.path.join(target, label))
        for name in sorted(os.listdir(os.path.join(digits_dir, label)))[:PER_CLASS]:
            with Image.open(os.path.join(digits_dir, label, name)) as image:
                image.resize((size, size)).save(os.path.join(target, label, name))
    if extra_class:
        shutil.copytree(os.path.join(target, "1"), os.path.join(target, extra_class))
    return target


def _trainer_runs(home: str) -> int:
    graph = Graph(open_store(home=home))
    return sum(1 for e in graph.store.get_executions() if graph.type_of(e).endswith("Trainer"))


def _second_run(kind: str, home: str, data: str, on_finish=None) -> str:
    """Runs the pipeline in-process on drifted data; returns the error message (it must fail).
    With `on_finish`, through pipelines.local_runner.run with that callback instead."""
    name = f"{kind}_classifier"
    trainers = _trainer_runs(home)
    config = load_config(kind, overrides={"home": home, "train_steps": 30, "eval_steps": 5, "data": data})
    with pytest.raises(local_runner.ConveyorError) as error:
        if on_finish is None:
            local_runner.run(config, stream=io.StringIO())
        else:
            dag_runner.run(config, stream=io.StringIO(), on_finish=on_finish)
    assert _trainer_runs(home) == trainers, "a Trainer ran on drifted data"
    served = os.path.join(home, "serving", name)
    assert sorted(os.listdir(served)) == [".push.lock", "1"]
    graph = Graph(open_store(home=home))
    assert [v.version for v in pushed_models(graph, name)] == [1]
    return str(error.value)


@pytest.fixture(scope="module")
def image_home(tmp_path_factory, digits_dir):
    root = tmp_path_factory.mktemp("image_drift")
    home = str(root / "home")
    pushed_first_run("image", _digits_subset(digits_dir, str(root / "digits")), home)
    schema = os.path.join(home, "serving", "image_classifier", "1", "assets.extra", "conveyor_schema.pbtxt")
    assert os.path.isfile(schema), "the pushed model carries the schema it was trained with"
    return home


def test_new_class_stops_the_run(image_home, digits_dir, tmp_path):
    message = _second_run("image", image_home, _digits_subset(digits_dir, str(tmp_path / "d"), extra_class="10"))
    assert "the run stops before Transform" in message
    assert "feature 'label_name'" in message and "new class(es) ['10']" in message, message
    assert "Unexpected string values" in message, message  # TFDV itself, from the blessed schema


def test_missing_class_stops_the_run(image_home, digits_dir, tmp_path):
    def store_gone(config, started):  # as when a MySQL store goes away mid-run
        raise MetadataConnectionError("cannot open the ML Metadata store, MySQL database 'mlmd' at db:3306")

    message = _second_run("image", image_home, _digits_subset(digits_dir, str(tmp_path / "d"), skip_class="3"),
                          on_finish=store_gone)
    assert "feature 'label_name'" in message and "class(es) ['3'] of the blessed model have no examples" in message, message
    # The run's own error comes first; the summary's failure is named after it, not instead.
    assert message.index("feature 'label_name'") < message.index(
        "the run's summary could not be read either: cannot open the ML Metadata store"), message


def test_images_of_another_size_stop_the_run(image_home, digits_dir, tmp_path):
    message = _second_run("image", image_home, _digits_subset(digits_dir, str(tmp_path / "d"), size=16))
    for feature in ("image_height", "image_width"):
        assert f"feature '{feature}': Out-of-range values" in message and "large value: 16" in message, message
    assert "label_name" not in message, message


def test_empty_input_is_a_clear_error(image_home, tmp_path):
    empty = tmp_path / "empty"
    for label in ("0", "1"):
        (empty / label).mkdir(parents=True)
    message = _second_run("image", image_home, str(empty))
    assert str(empty) in message and "no" in message, message
    assert "Traceback" not in message


def _reviews(target: str, count: int, numbers: bool = False) -> str:
    with open(IMDB_CSV, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[:count]
    os.makedirs(target)
    with open(os.path.join(target, "reviews.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for i, row in enumerate(rows):
            # A text column that now holds numbers (e.g. a ratings export put in the wrong column).
            writer.writerow([f"{1000 + 37 * i} {i % 10}" if numbers else row["review"], row["sentiment"]])
    return target


@pytest.mark.skipif(not os.path.exists(IMDB_CSV), reason="shared IMDB reviews not available")
def test_text_column_of_numbers_stops_the_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_drift")
    home = str(root / "home")
    pushed_first_run("text", _reviews(str(root / "reviews"), TEXT_REVIEWS), home)
    message = _second_run("text", home, _reviews(str(root / "numbers"), TEXT_REVIEWS, numbers=True))
    assert "feature 'text_alpha_ratio': Out-of-range values" in message, message
