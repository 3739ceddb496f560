"""`conveyor ui`: a local, read-only dashboard of runs, served models and run comparisons.

Server-rendered Flask + Jinja2 pages (autoescaped; no scripts, no CDN: works offline),
reading MLMD live through the same code as the CLI (conveyor/metadata; a new read-only
store connection per request, so every page shows the store as it is now):
  /                 runs of every pipeline, newest first (?pipeline= to filter), each linking
                    to its report;
  /report           one run's HTML report (conveyor/report.py), ?pipeline=&run=;
  /models           each served model's versions: pushed when, from which run, accuracy, and
                    which versions are live according to HOME/serving/models.config;
  /models/<name>/<version>   the lineage of that version drawn as a graph;
  /compare          two runs side by side (`conveyor diff`), ?pipeline=&a=&b=;
  /serving          a running `conveyor serve` (--serving-url): versions and their states,
                    request counts from its Prometheus metrics.
"""
import dataclasses
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from flask import Flask, redirect, render_template, request, url_for
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from conveyor.metadata.diff import RunDiff, diff_runs
from conveyor.metadata.lineage import Lineage, lineage_of_version, pushed_models
from conveyor.metadata.runs import NodeRun, RunRecord, list_runs, run_contexts
from conveyor.metadata.store import METADATA_FILE, Graph, LineageError, home_dir, open_store
from pipelines.config import MySQLMetadata
from pipelines.metadata_connection import MetadataConnectionError, store_exists

HOST = "127.0.0.1"
PORT = 8080
MODELS_CONFIG = os.path.join("serving", "models.config")  # under HOME (pipelines/config.py serving_dir)
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's default (serving/metrics.py)
SERVING_TIMEOUT_S = 3.0
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           'fill="#263238"/><path d="M3 11h10M3 8h10M3 5h10" stroke="#80cbc4" stroke-width="1.6"/></svg>')


class UiArgumentError(ValueError):
    """A `conveyor ui` flag value that cannot work (exit status 2); the message is one line."""


def check_port(port: int) -> int:
    """Returns `port` if it is a TCP port (1..65535; 0 would make the OS pick one silently).

    Raises:
      UiArgumentError: outside 1..65535.
    """
    if not 1 <= port <= 65535:
        raise UiArgumentError(f"--port {port}: expected a TCP port 1..65535")
    return port


def check_serving_url(url: Optional[str]) -> Optional[str]:
    """Returns a model server URL of the form http(s)://host[:port] (a trailing "/" is
    dropped), or None for None.

    Raises:
      UiArgumentError: another scheme, no host, a port outside 1..65535, or a path, query
        or fragment.
    """
    if url is None:
        return None
    expected = "expected http(s)://host[:port], e.g. http://127.0.0.1:8501"
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise UiArgumentError(f"--serving-url {url!r}: bad port; {expected}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or (port is not None and not 1 <= port <= 65535):
        raise UiArgumentError(f"--serving-url {url!r}: {expected}")
    return url.rstrip("/")


def run_state(row: RunRecord) -> str:
    """One word for a run: "unchanged" (a no-op rerun), "failed" (a node failed), "running",
    "manual blessing", or "complete"."""
    states = {n.state for n in row.nodes}
    if row.unchanged_since:
        return "unchanged"
    if row.manual_blessing:
        return "manual blessing"
    if "failed" in states:
        return "failed"
    if "running" in states:
        return "running"
    return "complete"


@dataclasses.dataclass
class LiveVersions:
    """What models.config says is served for one model: `versions` (the policy's versions,
    "latest" resolved to the newest version folder on disk) and `labels` (label -> version)."""
    versions: List[str]
    labels: Dict[str, str]
    policy: str


def live_versions(home: str) -> Dict[str, LiveVersions]:
    """Model name -> LiveVersions, from HOME/serving/models.config (TF Serving's
    ModelServerConfig; policy semantics of tensorflow_serving/config/file_system_storage_path_source.proto:
    latest N by default, `all`, or `specific` versions). {} when there is no models.config."""
    from serving.model_config import ModelConfigError, read_models_config
    path = os.path.join(home, MODELS_CONFIG)
    if not os.path.exists(path):
        return {}
    try:
        config = read_models_config(path)
    except ModelConfigError:
        return {}
    out = {}
    for model in config.model_config_list.config:
        base = model.base_path if os.path.isabs(model.base_path) else os.path.join(os.path.dirname(path),
                                                                                     model.base_path)
        on_disk = sorted((int(v) for v in (os.listdir(base) if os.path.isdir(base) else []) if v.isdigit()),
                         reverse=True)
        policy = model.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        if kind == "specific":
            versions = sorted(policy.specific.versions, reverse=True)
        elif kind == "all":
            versions = on_disk
        else:
            versions = on_disk[:max(1, policy.latest.num_versions or 1)]
        out[model.name] = LiveVersions([str(v) for v in versions],
                                       {k: str(v) for k, v in model.version_labels.items()}, kind)
    return out


def lineage_graph(lin: Lineage) -> Tuple[List[NodeRun], List[Tuple[str, str]]]:
    """A pushed version's lineage as graph nodes (state = artifact id, drawn by report.dag_svg)
    and edges: examples -> statistics -> schema -> transform -> model -> evaluation ->
    blessing -> push (infra validation beside the evaluation)."""
    nodes: List[NodeRun] = []
    present = {}
    for key, label, ref in (("examples", "Examples", lin.examples), ("statistics", "Statistics", lin.statistics),
                            ("schema", "Schema", lin.schema), ("anomalies", "Anomalies", lin.anomalies),
                            ("transform", "TransformGraph", lin.transform_graph), ("model", "Model", lin.model),
                            ("evaluation", "ModelEvaluation", lin.evaluation and lin.evaluation.artifact),
                            ("blessing", "ModelBlessing", lin.blessing), ("infra", "InfraBlessing", lin.infra_blessing),
                            ("pushed", "PushedModel", lin.pushed)):
        if ref is not None:
            present[key] = label
            nodes.append(NodeRun(node=label, state=f"artifact {ref.artifact_id}"))
    edges = [(a, b) for a, b in (("examples", "statistics"), ("statistics", "schema"), ("statistics", "anomalies"),
                                 ("schema", "anomalies"), ("examples", "transform"), ("schema", "transform"),
                                 ("transform", "model"), ("examples", "model"), ("model", "evaluation"),
                                 ("examples", "evaluation"), ("evaluation", "blessing"), ("model", "infra"),
                                 ("blessing", "pushed"), ("infra", "pushed"), ("model", "pushed"))
             if a in present and b in present]
    return nodes, [(present[a], present[b]) for a, b in edges]


def serving_status(url: str, models: List[str]) -> Dict[str, Any]:
    """Status of a running model server: per model its versions and states (TF Serving's
    GET /v1/models/<name>) and request counts per (model, version, status), summed over API
    and protocol from the counters with `model_name` and `status` labels on its Prometheus page
    (serving/metrics.py: conveyor_serving_request_count).

    Returns:
      {"url", "error": None or one line, "models": {name: [{"version", "state", "error"}]},
       "requests": [(model, version, status, count)]}.
    """
    from prometheus_client.parser import text_string_to_metric_families
    out: Dict[str, Any] = {"url": url, "error": None, "models": {}, "requests": []}
    base = url.rstrip("/")
    try:
        for name in models:
            try:
                with urllib.request.urlopen(f"{base}/v1/models/{urllib.parse.quote(name)}",
                                            timeout=SERVING_TIMEOUT_S) as r:
                    status = json.loads(r.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                out["models"][name] = [{"version": "-", "state": f"HTTP {e.code}", "error": ""}]
                continue
            out["models"][name] = [{"version": v.get("version"), "state": v.get("state"),
                                    "error": (v.get("status") or {}).get("error_message", "")}
                                   for v in status.get("model_version_status", [])]
        with urllib.request.urlopen(base + PROMETHEUS_PATH, timeout=SERVING_TIMEOUT_S) as r:
            text = r.read().decode("utf-8")
    except (urllib.error.URLError, OSError, ValueError) as e:
        out["error"] = f"cannot reach the model server at {url}: {getattr(e, 'reason', e)}"
        return out
    counts: Dict[Tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith("_total") and "status" in labels and "model_name" in labels:
                key = (labels["model_name"], labels.get("version", ""), labels["status"])
                counts[key] = counts.get(key, 0.0) + sample.value
    out["requests"] = [(m, v, s, int(c)) for (m, v, s), c in sorted(counts.items())]
    return out


def create_app(home: Optional[str] = None, serving_url: Optional[str] = None,
               metadata: Optional[MySQLMetadata] = None) -> Flask:
    """The dashboard's Flask app (GET pages only; see the module docstring).

    Args:
      home: Conveyor HOME with metadata.sqlite and serving/ (default ./conveyor_home).
      serving_url: base URL of a running `conveyor serve` REST port, e.g.
        http://127.0.0.1:8501; None hides the live status.
      metadata: a config's MySQL store of ML Metadata (None: HOME/metadata.sqlite); an
        unreachable one is an error page (503) naming host, port and database.
    """
    home = home_dir(home)
    app = Flask(__name__)
    app.config["CONVEYOR_HOME"] = home

    def store():
        return open_store(home, metadata=metadata)

    def error_page(message: str, status: int, title: str = "Not found"):
        return render_template("error.html", title=title, message=message, home=home,
                               serving_url=serving_url), status

    @app.errorhandler(LineageError)
    def lineage_error(e):
        return error_page(str(e), 404)

    @app.errorhandler(MetadataConnectionError)
    def store_unreachable(e):
        return error_page(str(e), 503, "Metadata store unreachable")

    @app.errorhandler(HTTPException)
    def http_error(e):
        # The dashboard's own page, not Werkzeug's bare one (unknown URL, wrong method).
        return error_page(e.description or e.name, e.code or 500, e.name)

    @app.route("/favicon.ico")
    def favicon():
        # Browsers ask for it on every page (also on the reports served here); a 404 would
        # be a console error.
        return app.response_class(FAVICON, mimetype="image/svg+xml")

    @app.route("/")
    def runs():
        pipeline = request.args.get("pipeline") or None
        if not store_exists(home, metadata):
            return render_template("runs.html", rows=[], pipelines=[], pipeline=None, state=run_state, home=home,
                                   serving_url=serving_url, empty=f"No runs yet: run a pipeline first "
                                                                  f"(no {METADATA_FILE} in HOME {home}).")
        s = store()
        rows = list(reversed(list_runs(s, pipeline)))
        return render_template("runs.html", rows=rows, pipelines=Graph(s).pipelines(), pipeline=pipeline,
                               state=run_state, home=home, serving_url=serving_url)

    @app.route("/report")
    def report():
        from conveyor.report import render
        # Without pipeline: the store's only pipeline; without run: its latest (as `conveyor report`).
        pipeline, run = request.args.get("pipeline") or None, request.args.get("run") or None
        return render(store(), pipeline, run, home)

    @app.route("/models")
    def models():
        s = store()
        graph = Graph(s)
        live = live_versions(home)
        rows = []
        for name in graph.pipelines():
            versions = []
            for v in reversed(pushed_models(graph, name)):
                lin = lineage_of_version(s, name, str(v.version))
                accuracy = lin.evaluation.candidate.get("sparse_categorical_accuracy") if lin.evaluation else None
                manual = bool(lin.blessing and lin.blessing.manual)
                # A manual blessing pushes from its own run: name the run that trained the model.
                trained = lin.model.run_id if lin.model and lin.model.run_id else v.run_id
                versions.append({"version": str(v.version), "pushed_at": v.pushed_at, "run_id": trained,
                                 "push_run_id": v.run_id if v.run_id != trained else None,
                                 "accuracy": accuracy, "manual": manual})
            if versions:
                rows.append({"name": name, "versions": versions, "live": live.get(name)})
        return render_template("models.html", models=rows, home=home, serving_url=serving_url)

    @app.route("/models/<name>")
    def model(name):
        # One section per model on the models page; an unknown model is the error page.
        if name not in Graph(store()).pipelines() or not pushed_models(Graph(store()), name):
            return error_page(f"no model {name!r} with pushed versions in HOME {home}", 404)
        return redirect(url_for("models") + "#model-" + urllib.parse.quote(name))

    @app.route("/models/<name>/<version>")
    def version(name, version):
        from conveyor.report import _lineage_section, dag_svg
        lin = lineage_of_version(store(), name, version)
        nodes, edges = lineage_graph(lin)
        return render_template("version.html", name=name, version=version, graph=Markup(dag_svg(nodes, edges)),
                               details=Markup(_lineage_section(lin, f"Version {version} of {name}.")),
                               live=live_versions(home).get(name), home=home, serving_url=serving_url)

    @app.route("/compare")
    def compare():
        s = store()
        graph = Graph(s)
        pipelines = graph.pipelines()
        pipeline = request.args.get("pipeline") or (pipelines[0] if pipelines else None)
        runs_of = [c.name for c in run_contexts(graph, pipeline)] if pipeline else []
        a, b = request.args.get("a"), request.args.get("b")
        diff: Optional[RunDiff] = diff_runs(s, pipeline, a, b) if pipeline and a and b else None
        return render_template("compare.html", pipelines=pipelines, pipeline=pipeline, runs=runs_of, a=a, b=b,
                               diff=diff, home=home, serving_url=serving_url)

    @app.route("/serving")
    def serving():
        if not serving_url:
            return render_template("serving.html", status=None, home=home, serving_url=serving_url)
        names = sorted(live_versions(home))
        return render_template("serving.html", status=serving_status(serving_url, names), live=live_versions(home),
                               home=home, serving_url=serving_url)

    return app


def startup_warning(home: Optional[str], metadata: Optional[MySQLMetadata] = None) -> Optional[str]:
    """One line when HOME has no metadata store (a mistyped --home shows no runs), else None
    (always None for a MySQL store: the pages say when it cannot be reached)."""
    if store_exists(home_dir(home), metadata):
        return None
    path = os.path.join(home_dir(home), METADATA_FILE)
    return f"conveyor ui: warning: no {path}: no runs to show yet (run a pipeline first, or pass --home)"


def serve(home: Optional[str] = None, port: int = PORT, host: str = HOST,
          serving_url: Optional[str] = None, metadata: Optional[MySQLMetadata] = None) -> None:
    """Runs the dashboard until interrupted (werkzeug's threaded server) and prints its URL
    (`metadata`: as create_app)."""
    from werkzeug.serving import make_server
    warning = startup_warning(home, metadata)
    if warning:
        print(warning, flush=True)
    server = make_server(host, port, create_app(home, serving_url, metadata), threaded=True)
    print(f"conveyor ui: http://{host}:{server.server_port}/ (HOME {home_dir(home)}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
