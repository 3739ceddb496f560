"""`conveyor bless` refusals on MLMD records shaped as TFX writes them: one line, at once
(no TensorFlow import), nothing created. The blessing itself is tested end to end in
tests/e2e/test_daily_loop.py."""
import json
import os
import subprocess
import sys

from tests.support import mlmd_records as rec

NAME = "image_classifier"


def _threshold_only_rerun(home: str) -> None:
    """r1: a model blessed by the Evaluator and infra-validated; r2: only a threshold changed,
    so the Trainer and the InfraValidator are cached and the Evaluator compares the model with
    itself: TFX records ONE input event for it, path [baseline_model, 0, model, 0]."""
    store = rec.sqlite_store(os.path.join(home, "metadata.sqlite"))
    r1, r2 = rec.run_context(store, "2026-01-01T10:00:00"), rec.run_context(store, "2026-01-01T11:00:00")
    model = rec.artifact(store, "Model", "/m/1")
    infra = rec.artifact(store, "InfraBlessing", "/i/1", blessed=1)
    rec.execution(store, NAME, r1, "Trainer", outputs=[(model, ["model", 0])])
    rec.execution(store, NAME, r1, "BaselineEvaluator", inputs=[(model, ["model", 0])],
                  outputs=[(rec.artifact(store, "ModelBlessing", "/b/1", blessed=1, current_model_id=model.id),
                            ["blessing", 0])])
    rec.execution(store, NAME, r1, "ConveyorInfraValidator", inputs=[(model, ["model", 0])],
                  outputs=[(infra, ["blessing", 0])])
    rec.execution(store, NAME, r2, "Trainer", outputs=[(model, ["model", 0])], state=3)  # CACHED
    rec.execution(store, NAME, r2, "BaselineEvaluator", inputs=[(model, ["baseline_model", 0, "model", 0])],
                  outputs=[(rec.artifact(store, "ModelBlessing", "/b/2", blessed=0, current_model_id=model.id),
                            ["blessing", 0])])
    rec.execution(store, NAME, r2, "ConveyorInfraValidator", inputs=[(model, ["model", 0])],
                  outputs=[(infra, ["blessing", 0])], state=3)


SCRIPT = """
import contextlib, io, json, sys, time
from conveyor.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    out.append([code, err.getvalue(), time.monotonic() - started])
print(json.dumps({"results": out, "tensorflow": "tensorflow" in sys.modules, "tfx": "tfx" in sys.modules}))
"""


def test_refusals_answer_at_once_and_create_nothing(tmp_path):
    home = str(tmp_path / "home")
    _threshold_only_rerun(home)
    before = sorted(os.listdir(home))
    missing = str(tmp_path / "nonexistent")
    calls = [["bless", "--run", "2", "--reason", "pilot", "--home", home],
             ["bless", "--run", "1", "--reason", "pilot", "--home", home],
             ["bless", "--run", "2", "--reason", "  ", "--home", home],
             ["bless", "--run", "1", "--reason", "pilot", "--home", missing]]
    result = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(calls)], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    (rerun, blessed, no_reason, no_home) = found["results"]
    assert rerun[:2] == [1, "conveyor bless: run 2026-01-01T11:00:00's model (artifact 1) is the latest "
                            "blessed model already; not blessing it\n"]
    assert blessed[:2] == [1, "conveyor bless: run 2026-01-01T10:00:00's model is blessed already "
                              "(by the Evaluator); nothing to override\n"]
    assert no_reason[0] == 1 and "--reason" in no_reason[1]
    assert no_home[0] == 1 and "no metadata store" in no_home[1]
    assert not found["tensorflow"] and not found["tfx"]
    assert all(seconds < 5 for _, _, seconds in found["results"]), found
    assert not os.path.exists(missing)
    assert sorted(set(os.listdir(home)) - {".run.lock"}) == before  # no logs/ for a refusal
