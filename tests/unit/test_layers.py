"""The import direction of the README's Layout: conveyor/ -> pipelines/ -> components/ ->
modules/ -> serving/, data/. A folder imports only folders to its right; serving/ and data/
import nothing from the project. Every import counts, function-local ones included."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ORDER = ["conveyor", "pipelines", "components", "modules"]
LEAVES = {"serving", "data"}
PROJECT = set(ORDER) | LEAVES | {"kubeflow", "bench", "scripts", "tests"}


def allowed_targets(folder: str) -> set:
    if folder in LEAVES:
        return {folder}
    below = set(ORDER[ORDER.index(folder):]) | LEAVES
    # `conveyor compile kubeflow` dispatches to that entry point (which imports pipelines/).
    return below | {"kubeflow"} if folder == "conveyor" else below


def imports_of(path: str):
    """(line, top-level package) of every import in a file, nested ones included."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and _is_dynamic_import(node.func)):
            yield node.lineno, node.args[0].value.split(".")[0]


def _is_dynamic_import(func) -> bool:
    """importlib.import_module("x.y") / import_module("x.y") / __import__("x.y")."""
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("import_module", "__import__")


def layer_violations(repo: str = REPO):
    found = []
    for folder in ORDER + sorted(LEAVES):
        for root, _, files in os.walk(os.path.join(repo, folder)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(root, name)
                for line, target in imports_of(path):
                    if target in PROJECT and target not in allowed_targets(folder):
                        found.append(f"{os.path.relpath(path, repo)}:{line} imports {target}")
    return found


def test_no_import_goes_against_the_layers():
    assert layer_violations() == []


@pytest.mark.parametrize("source, target", [
    ("components/x.py", "from pipelines.config import has_span_spec"),
    ("modules/x.py", "def f():\n    from components.example_validator import tighten_schema\n"),
    ("serving/x.py", "from modules import features"),
    ("serving/x.py", "import data.idx"),
    ("pipelines/x.py", "from conveyor import run_summary"),
    ("serving/x.py", "import importlib\nimportlib.import_module('modules.features')"),
    ("data/x.py", "__import__('serving.contract')"),
])
def test_the_check_catches_an_upward_import(tmp_path, source, target):
    folder = tmp_path / os.path.dirname(source)
    folder.mkdir(parents=True)
    (tmp_path / source).write_text(target)
    assert len(layer_violations(str(tmp_path))) == 1
