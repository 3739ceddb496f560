"""One self-contained HTML report of a pipeline run, read from MLMD (see conveyor/metadata).

No network: inline CSS, inline SVG charts and PNG data URIs, no scripts. Sections: the DAG
with component states and durations, dataset statistics, samples per class (images) or the
token-length histogram (text) and anomalies, evaluation metrics vs the baseline (chart +
per-label accuracy), where the model goes wrong (confusion matrix, most confident mistakes),
training curves (candidate vs baseline), lineage of the pushed model, and the pushed versions
(pictures: conveyor/pictures.py).
"""
import datetime
import html
import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from conveyor import pictures
from conveyor.drift import DriftRecord, read_drift
from conveyor.monitor import read_monitor
from conveyor.metadata.artifacts import ACCURACY, EdgeExportsSummary, RuleResult, run_spans
from conveyor.metadata.diff import RunDetails, dag_edges, run_details
from conveyor.metadata.lineage import Lineage, PushedVersion, lineage_of_version, pushed_models
from conveyor.metadata.runs import NodeRun, default_pipeline, resolve_run
from conveyor.metadata.store import Graph, open_store
from modules import features as F
from pipelines.config import Config

_COLORS = {"complete": "#2e7d32", "cached": "#1565c0", "failed": "#c62828", "not run": "#9e9e9e",
           "running": "#ef6c00", "canceled": "#6d4c41", "new": "#757575"}
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#212121;
     padding:0 16px;line-height:1.4}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;margin:8px 0;font-size:13px} th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f5f5f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600;font-size:13px}
.ok{background:#2e7d32} .bad{background:#c62828} .neutral{background:#757575}
.muted{color:#757575;font-size:12px} code{font-size:12px;background:#f5f5f5;padding:1px 4px;border-radius:3px;
word-break:break-all}
.bar{display:inline-block;height:10px;background:#64b5f6;vertical-align:middle}
ul.reasons li{color:#c62828} pre.reasons{color:#c62828;white-space:pre-wrap;font-size:12px} .lineage td:first-child{font-weight:600;white-space:nowrap}
.mistakes{display:flex;flex-wrap:wrap;gap:8px} figure.mistake{margin:0;padding:6px;border:1px solid #ddd;
border-radius:4px;width:150px;font-size:12px;text-align:center} figure.mistake blockquote{margin:0;text-align:left;
font-size:11px;max-height:120px;overflow:hidden} .charts{display:flex;flex-wrap:wrap;gap:16px}
"""


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: List[str], rows: List[List[str]], num_cols: Tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td class=\"num\">{c}</td>" if i in num_cols else f"<td>{c}</td>"
                                     for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# DAG ----------------------------------------------------------------------------------

def transitive_reduction(edges: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """Drops a -> c when a longer path a -> ... -> c exists (readable drawing, same dependencies).

    Args:
      edges: (from node, to node) pairs of a DAG.
    Returns:
      the edges that remain, in their given order.
    """
    succ: Dict[str, set] = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)

    def reachable(start: str, skip: Tuple[str, str]) -> set:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            for nxt in succ.get(node, ()):
                if (node, nxt) == skip or nxt in seen:
                    continue
                seen.add(nxt)
                todo.append(nxt)
        return seen

    return [(a, b) for a, b in edges if b not in reachable(a, (a, b))]


def dag_svg(nodes: List[NodeRun], edges: List[Tuple[str, str]]) -> str:
    """The DAG as inline SVG: column = longest path from a source, boxes coloured by state.

    Args:
      nodes: the run's nodes (name, state, seconds); each box is a `g.dag-node` with
        data-node/data-state attributes.
      edges: (from node, to node) pairs (see metadata.diff.dag_edges); reduced before drawing.
    Returns:
      one `<svg>` element as text.
    """
    names = [n.node for n in nodes]
    edges = transitive_reduction(edges)
    layer = {n: 0 for n in names}
    for _ in names:  # relax longest paths (the graph is a small DAG)
        for a, b in edges:
            if a in layer and b in layer and layer[b] < layer[a] + 1:
                layer[b] = layer[a] + 1
    moved = set()
    for n in names:  # a source (e.g. the resolver) sits just before its first consumer
        targets = [layer[b] for a, b in edges if a == n and b in layer]
        if targets and not any(b == n for _, b in edges):
            layer[n] = max(0, min(targets) - 1)
            moved.add(n)
    columns: Dict[int, List[str]] = {}
    for n in sorted(names, key=lambda n: n in moved):
        columns.setdefault(layer[n], []).append(n)
    box_w, box_h, gap_x, gap_y, pad = 134, 50, 24, 18, 8
    pos = {}
    for col, members in columns.items():
        for row, n in enumerate(members):
            pos[n] = (pad + col * (box_w + gap_x), pad + row * (box_h + gap_y))
    width = pad * 2 + (max(columns) + 1) * (box_w + gap_x) - gap_x if columns else 100
    height = pad * 2 + max(len(m) for m in columns.values()) * (box_h + gap_y) - gap_y if columns else 60
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" style="max-width:100%;height:auto" role="img" '
             'aria-label="pipeline DAG">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#616161"/></marker></defs>']
    for a, b in edges:
        if a not in pos or b not in pos:
            continue
        (x1, y1), (x2, y2) = pos[a], pos[b]
        sx, sy, tx, ty = x1 + box_w, y1 + box_h / 2, x2, y2 + box_h / 2
        mx = (sx + tx) / 2
        parts.append(f'<path d="M{sx},{sy} C{mx},{sy} {mx},{ty} {tx - 2},{ty}" fill="none" stroke="#616161" '
                     f'stroke-width="1.3" marker-end="url(#arrow)"/>')
    for n in nodes:
        x, y = pos[n.node]
        color = _COLORS.get(n.state, "#757575")
        secs = f'{n.seconds:.1f}s' if n.seconds is not None else ""
        if n.state == "running" and secs:
            secs = "for " + secs
        label = n.node if len(n.node) <= 19 else n.node[:18] + "…"
        parts.append(f'<g class="dag-node" data-node="{_e(n.node)}" data-state="{_e(n.state)}">'
                     f'<title>{_e(n.node)}: {_e(n.state)} {_e(secs)}</title>'
                     f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="#fff" '
                     f'stroke="{color}" stroke-width="2.5"/>'
                     f'<rect x="{x}" y="{y}" width="6" height="{box_h}" rx="2" fill="{color}"/>'
                     f'<text x="{x + 14}" y="{y + 21}" font-size="12" font-weight="600" fill="#212121">'
                     f'{_e(label)}</text>'
                     f'<text x="{x + 14}" y="{y + 40}" font-size="12" fill="{color}">{_e(n.state)}'
                     f'<tspan fill="#616161"> {_e(secs)}</tspan></text></g>')
    parts.append("</svg>")
    return "".join(parts)


# metrics chart --------------------------------------------------------------------------

def metrics_chart(bars: List[Tuple[str, Optional[float], Optional[float]]], floor: Optional[float] = None,
                  majority: Optional[float] = None) -> str:
    """Grouped bars, candidate vs baseline accuracy, 0..1, with floor/majority reference lines.

    Args:
      bars: (group name, candidate accuracy, baseline accuracy) per group, accuracies in 0..1
        (clipped) or None (no bar).
      floor, majority: accuracy floor and majority-class rate (0..1) drawn as dashed lines; None = not drawn.
    Returns:
      one `<svg>` element as text.
    """
    group_w, bar_w, left, top, plot_h = 90, 30, 48, 16, 200
    width = left + max(1, len(bars)) * group_w + 150
    height = top + plot_h + 46
    y = lambda v: top + plot_h * (1 - max(0.0, min(1.0, v)))  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="accuracy chart">']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{left + len(bars) * group_w}" y1="{y(tick)}" y2="{y(tick)}" '
                     f'stroke="#eee"/><text x="{left - 6}" y="{y(tick) + 4}" font-size="11" text-anchor="end" '
                     f'fill="#757575">{tick:.2f}</text>')
    for i, (name, cand, base) in enumerate(bars):
        gx = left + i * group_w + 12
        for j, (value, color, who) in enumerate(((cand, "#1e88e5", "candidate"), (base, "#bdbdbd", "baseline"))):
            if value is None:
                continue
            x = gx + j * (bar_w + 2)
            parts.append(f'<rect class="bar-{who}" x="{x}" y="{y(value)}" width="{bar_w}" '
                         f'height="{top + plot_h - y(value)}" fill="{color}"><title>{_e(name)} {who} '
                         f'{value:.4f}</title></rect><text x="{x + bar_w / 2}" y="{y(value) - 3}" font-size="10" '
                         f'text-anchor="middle" fill="#424242">{value:.2f}</text>')
        parts.append(f'<text x="{gx + bar_w}" y="{top + plot_h + 16}" font-size="12" text-anchor="middle">'
                     f'{_e(name)}</text>')
    for value, color, text in ((floor, "#c62828", "accuracy floor"), (majority, "#ef6c00", "majority class")):
        if value is not None:
            parts.append(f'<line x1="{left}" x2="{left + len(bars) * group_w}" y1="{y(value)}" y2="{y(value)}" '
                         f'stroke="{color}" stroke-dasharray="5,4"/>')
    lx = left + len(bars) * group_w + 16
    legend = [("#1e88e5", "candidate", "rect"), ("#bdbdbd", "baseline", "rect")]
    if floor is not None:
        legend.append(("#c62828", f"floor {floor:.2f}", "line"))
    if majority is not None:
        legend.append(("#ef6c00", f"majority {majority:.2f}", "line"))
    for k, (color, text, shape) in enumerate(legend):
        ly = top + 10 + k * 20
        mark = (f'<rect x="{lx}" y="{ly - 9}" width="12" height="12" fill="{color}"/>' if shape == "rect" else
                f'<line x1="{lx}" x2="{lx + 12}" y1="{ly - 3}" y2="{ly - 3}" stroke="{color}" stroke-dasharray="4,2"/>')
        parts.append(mark + f'<text x="{lx + 18}" y="{ly + 1}" font-size="12">{_e(text)}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#9e9e9e"/></svg>')
    return "".join(parts)


# sections -----------------------------------------------------------------------------

def _data_pictures(graph: Graph, details: RunDetails) -> str:
    """Sample images per class (image runs) or the token-length histogram (text runs)."""
    ex = details.examples
    if ex and ex.uri:
        samples = pictures.sample_images(ex.uri, ex.label_names or [])
        if samples:
            return "<h3 id=\"samples\">Sample images per class</h3>" + pictures.samples_html(samples)
    stats = graph.artifact(details.statistics.artifact_id) if details.statistics else None
    buckets = pictures.token_histogram(graph, stats) if stats is not None else []
    if buckets:
        return ("<h3 id=\"token-lengths\">Text length (train split, TFDV statistics)</h3>" +
                pictures.histogram_svg(buckets, "tokens per text"))
    return ""


def _model_pictures_section(graph: Graph, details: RunDetails) -> str:
    """Where the model goes wrong (confusion matrix, most confident mistakes) and how
    training went (loss and accuracy per epoch, candidate vs baseline)."""
    out = []
    ev = details.evaluation
    evaluation = graph.artifact(ev.artifact.artifact_id) if ev and ev.artifact else None
    if evaluation is not None:
        names = (details.examples.label_names if details.examples else None) or []
        confusion = pictures.confusion_matrix(evaluation.uri, names)
        record = pictures.read_mistakes(evaluation)
        if confusion or record:
            out.append("<h2>Where the model goes wrong</h2>")
        if confusion:
            out.append("<h3 id=\"confusion\">Confusion matrix (TFMA, eval split)</h3>" + pictures.confusion_svg(confusion))
        if record:
            out.append("<h3 id=\"mistakes\">Most confident mistakes</h3>" + pictures.mistakes_html(record))
    model = graph.artifact(details.model.artifact_id) if details.model else None
    run_uri = pictures.model_run_uri(graph, model)
    candidate = pictures.training_history(run_uri) if run_uri else {}
    baseline = {}
    if ev and ev.baseline_model:
        base_uri = pictures.model_run_uri(graph, graph.artifact(ev.baseline_model.artifact_id))
        baseline = pictures.training_history(base_uri) if base_uri else {}
    charts = pictures.training_curves_html(candidate, baseline)
    same_model = bool(ev and ev.baseline_model and details.model
                      and ev.baseline_model.artifact_id == details.model.artifact_id)
    if charts:
        out.append("<h2 id=\"training\">Training curves</h2><p class=\"muted\">Per epoch, from the Trainer's "
                   "TensorBoard logs; dashed: validation (eval split)" +
                   ("; baseline = the blessed model this run was compared with" if baseline else "") +
                   f".</p>" + ("<p id=\"same-model\">The Trainer came from the cache: candidate and baseline are "
                               "the same model, so their curves are the same.</p>" if same_model else "") +
                   pictures.transfer_phases_html(candidate) + f"<div class=\"charts\">{charts}</div>")
    return "".join(out)


def _dataset_section(details: RunDetails, data_pictures: str = "") -> str:
    out = ["<h2>Dataset</h2>"]
    ex = details.examples
    if ex:
        out.append(f"<p>Examples artifact {ex.artifact_id} from <code>{_e(ex.input_base)}</code> "
                   f"(pattern <code>{_e(ex.input_pattern)}</code>, span {_e(ex.span)}): "
                   f"<b>{_e(ex.example_count)}</b> examples, {_e(ex.skipped_count)} skipped; "
                   f"classes {_e(', '.join(ex.label_names or []))}.<br>"
                   f"<span class=\"muted\">input fingerprint {_e(ex.input_fingerprint)}</span></p>")
    stats = details.statistics
    if stats:
        splits = stats.splits
        labels = sorted({l for s in splits.values() for l in s.labels})
        peak = max([c for s in splits.values() for c in s.labels.values()] or [1])
        rows = []
        for label in labels:
            cells = [f"<b>{_e(label)}</b>"]
            for split in splits:
                count = splits[split].labels.get(label, 0)
                total = splits[split].num_examples or 1
                cells.append(f'<span class="bar" style="width:{int(80 * count / peak)}px"></span> '
                             f"{count} <span class=\"muted\">({100 * count / total:.0f}%)</span>")
            rows.append(cells)
        rows.append(["<b>total</b>"] + [f"<b>{_e(s.num_examples)}</b>" for s in splits.values()])
        out.append("<h3>Examples per label and split (StatisticsGen)</h3>")
        out.append(_table(["label"] + [f"split {s}" for s in splits], rows))
    else:
        out.append("<p class=\"muted\">No statistics in this run.</p>")
    out.append(data_pictures)
    anomalies = details.anomalies
    out.append("<h3>Anomalies (ExampleValidator vs schema)</h3>")
    validator = next((n for n in details.nodes if n.node.endswith("ExampleValidator")), None)
    if anomalies is None and validator is not None and validator.state == "failed":
        out.append(f"<p id=\"anomalies-stop\"><b>{_e(validator.node)} stopped the run</b>" +
                   (f":</p><pre class=\"reasons\">{_e(validator.error)}</pre>" if validator.error else
                    " (its reason is in the run's log under HOME/logs).</p>"))
    elif anomalies is None:
        out.append("<p class=\"muted\">The validator did not run.</p>")
    elif not anomalies.count:
        out.append("<p id=\"anomalies\">No anomalies in any split.</p>")
    else:
        out.append("<ul id=\"anomalies\" class=\"reasons\">" + "".join(
            f"<li>[{_e(s)}] {_e(a)}</li>" for s, items in anomalies.splits.items() for a in items) + "</ul>")
    schema = details.schema
    if schema:
        rows = [[f"<code>{_e(f)}</code>", _e(v.type), _e(v.shape if v.shape is not None else ""),
                 _e(domain_text(f, v.domain))] for f, v in schema.features.items()]
        out.append(f"<h3>Schema (artifact {schema.artifact_id})</h3>")
        out.append(_table(["feature", "type", "shape", "domain"], rows))
    return "".join(out)


DOMAIN_SHOWN = 5


def domain_text(feature: str, domain: Any) -> str:
    """A schema feature's value domain for a person: "" without one; for free-value features
    (modules/features.FREE_VALUE_FEATURES: text, image bytes) a note instead of the values
    (SchemaGen lists every text of the run; the gate checks the blessed model's training
    schema, which has no domain there: modules/training_schema.drop_free_value_domains);
    else at most DOMAIN_SHOWN values, then "… N more".

    Args:
      feature: the feature name.
      domain: FeatureSchema.domain: a list of values, a domain name, or None.
    """
    if domain is None:
        return ""
    if feature in F.FREE_VALUE_FEATURES:
        return "free values (no domain checked against the blessed model)"
    if not isinstance(domain, list):
        return str(domain)
    shown = ", ".join(str(v) for v in domain[:DOMAIN_SHOWN])
    return shown + (f", … {len(domain) - DOMAIN_SHOWN} more" if len(domain) > DOMAIN_SHOWN else "")


def _evaluation_section(details: RunDetails) -> str:
    ev = details.evaluation
    out = ["<h2>Evaluation vs baseline</h2>"]
    if not ev:
        return out[0] + "<p class=\"muted\">The evaluator did not run in this run.</p>"
    base = ev.baseline_model
    out.append("<p>Baseline: " + (
        f"model artifact {base.artifact_id} from run {_e(base.run_id)}"
        + (f", served as version {_e(', '.join(base.pushed_versions))}" if base.pushed_versions else "")
        if base else "none: no blessed model existed yet (max_drop rules are not checked)") + "</p>")
    cand, basem = ev.candidate, ev.baseline
    rows = []
    for key in sorted(cand):
        b = basem.get(key)
        digits = 0 if "count" in key else 4  # example_count is a count, not a rate
        delta = f"{cand[key] - b:+.{digits}f}" if b is not None else "-"
        rows.append([f"<code>{_e(key)}</code>", _num(cand[key], digits), _num(b, digits), delta])
    out.append(_table(["metric", "candidate", "baseline", "change"], rows, (1, 2, 3)))
    out.append(_rules_table(ev.rules, ev.majority_baseline))
    failures = ev.metrics.failures if ev.metrics else []
    if failures and not ev.rules:
        out.append("<p>Not blessed because:</p><ul class=\"reasons\">" +
                   "".join(f"<li>{_e(f)}</li>" for f in failures) + "</ul>")
    per_label = ev.metrics.per_label if ev.metrics else {}
    bars = [("overall", cand.get(ACCURACY), basem.get(ACCURACY))]
    bars += [(f"label {k}", v.get("candidate"), v.get("baseline")) for k, v in per_label.items()]
    out.append("<h3>Accuracy, overall and per label</h3>")
    out.append(metrics_chart(bars, ev.accuracy_floor, ev.majority_baseline))
    rows = [[f"<b>{_e(k)}</b>", _num(v.get("candidate")), _num(v.get("baseline"))] for k, v in per_label.items()]
    out.append("<h3>Per-slice (per-label) accuracy</h3>")
    out.append(_table(["label_name slice", "candidate", "baseline"], rows, (1, 2)))
    per_class = ev.metrics.per_class if ev.metrics else {}
    if per_class:
        names = sorted({m for v in per_class.values() for m in v.get("candidate", {})})
        rows = [[f"<b>{_e(c)}</b>"] + [_num(v.get("candidate", {}).get(m)) + (
            f" <span class=\"muted\">({_num(v['baseline'][m])})</span>" if m in v.get("baseline", {}) else "")
            for m in names] for c, v in per_class.items()]
        out.append("<h3 id=\"per-class\">Per-class metrics (one-vs-rest, TFMA; baseline in parentheses)</h3>")
        out.append(_table(["class"] + names, rows, tuple(range(1, len(names) + 1))))
    return "".join(out)


def _rules_table(rules: List[RuleResult], majority: Optional[float]) -> str:
    """The blessing rules with candidate, baseline and verdict; the first failed rule is
    marked as the one that blocked the push."""
    if not rules:
        return ""
    blocked = next((r for r in rules if r.passed is False), None)
    rows = []
    for r in rules:
        verdict = ("<span class=\"badge ok\">pass</span>" if r.passed else
                   "<span class=\"badge neutral\">not checked</span>" if r.passed is None else
                   "<span class=\"badge bad\">FAIL</span>")
        note = r.note if r.note != "failed" else ""
        if r is blocked:
            note = "blocked the push" + (f"; {note}" if note else "")
        rows.append([f"<code>{_e(r.rule)}</code>", _num(r.candidate), _num(r.baseline), verdict, _e(note)])
    return ("<h3 id=\"blessing-rules\">Blessing rules</h3>" +
            _table(["rule", "candidate", "baseline", "verdict", "note"], rows, (1, 2)) +
            f"<p class=\"muted\">majority-class rate on eval {_num(majority)}</p>")


def _lineage_section(lin: Optional[Lineage], note: str) -> str:
    out = ["<h2>Lineage of the pushed model</h2>"]
    if lin is None:
        return out[0] + f"<p class=\"muted\">{_e(note)}</p>"
    out.append(f"<p>{_e(note)}</p>")
    rows = [["pushed", f"version <b>{_e(lin.version)}</b> → <code>{_e(lin.pushed.destination)}</code> "
                       f"(artifact {lin.pushed.artifact_id}, run {_e(lin.pushed.run_id)})"]]
    b = lin.blessing
    if b and b.manual:
        rows.append(["blessing", f"<b>BLESSED MANUALLY</b> by {_e(b.blessed_by)} at {_e(b.created)}: "
                                 f"{_e(b.reason)} (artifact {b.artifact_id}; overrides the Evaluator's "
                                 f"blessing artifact {b.overrides_blessing_id})"])
    elif b:
        rows.append(["blessing", f"{'BLESSED' if b.blessed else 'NOT blessed'} (artifact {b.artifact_id})"])
    infra = lin.infra_blessing
    if infra:
        rows.append(["infra validation", f"{'BLESSED' if infra.blessed else 'NOT blessed'} (artifact "
                                         f"{infra.artifact_id}): {_e(infra.measurements.get('num_requests'))} "
                                         f"requests, p99 {_num(infra.measurements.get('p99_latency_ms'), 1)} ms"])
    ev = lin.evaluation
    if ev:
        base = ev.baseline_model
        rows.append(["evaluation", f"artifact {ev.artifact.artifact_id if ev.artifact else None}: accuracy "
                                   f"{_num(ev.candidate.get(ACCURACY))}; baseline " +
                     (f"model artifact {base.artifact_id}" if base else "none")])
    m = lin.model
    if m:
        rows.append(["model", f"artifact {m.artifact_id} — <b>{_e(m.model_type)}</b>, "
                              f"{_e(m.train_steps)} train steps, run {_e(m.run_id)}<br>"
                              f"<span class=\"muted\">hyperparameters "
                              f"{_e(json.dumps(m.hyperparameters, sort_keys=True))}</span><br>"
                              f"<span class=\"muted\">module <code>{_e(m.module_path)}</code></span>"])
    t = lin.transform_graph
    if t:
        rows.append(["transform graph", f"artifact {t.artifact_id}, module fingerprint "
                                        f"<code>{_e((t.module_fingerprint or '-')[:16])}</code>"])
    s = lin.schema
    if s:
        rows.append(["schema", f"artifact {s.artifact_id}: {_e(', '.join(sorted(s.features)))}"])
    st = lin.statistics
    if st:
        rows.append(["statistics", f"artifact {st.artifact_id}: " + ", ".join(
            f"{_e(k)} {_e(v.num_examples)}" for k, v in st.splits.items())])
    a = lin.anomalies
    if a:
        rows.append(["anomalies", f"artifact {a.artifact_id}: {a.count} anomalies"])
    e = lin.examples
    if e:
        rows.append(["examples", f"artifact {e.artifact_id} from <code>{_e(e.input_base)}</code>, span "
                                 f"{_e(e.span)}, {_e(e.example_count)} examples (" + ", ".join(
                                     f"{_e(k)} {_e(v)}" for k, v in e.split_counts.items()) + ")"])
    if lin.spans and lin.spans.worth_showing():
        rows.append(["data spans", _e(lin.spans.sentence())])
    body = "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in rows)
    out.append(f"<table class=\"lineage\">{body}</table>")
    return "".join(out)


def _edge_section(edge: Optional[EdgeExportsSummary]) -> str:
    """The edge exports of the pushed version (config edge_exports), or "" if none were made."""
    if edge is None or not edge.exports:
        return ""
    rows = [[_e(x.name), "pushed" if x.pushed else "<b>NOT pushed</b>", _num(x.accuracy), _num(x.accuracy_delta),
             _e(x.size_bytes), _num(x.latency_ms, 2), _e(x.reason)] for x in edge.exports]
    return (f"<h2 id='edge-exports'>Edge exports of version {_e(edge.version)}</h2>"
            f"<p><code>{_e(edge.destination)}</code>: SavedModel accuracy {_num(edge.reference_accuracy)} on "
            f"{_e(edge.eval_examples)} eval examples; latency = mean batch-1 prediction.</p>"
            + _table(["export", "state", "accuracy", "delta", "bytes", "latency ms", "why not pushed"],
                     rows, (2, 3, 4, 5)))


def _pushed_section(pushed: List[PushedVersion]) -> str:
    out = ["<h2>Pushed versions</h2>"]
    if not pushed:
        return out[0] + "<p class=\"muted\">Nothing has been pushed for this model yet.</p>"
    rows = []
    for v in reversed(pushed):
        rows.append([f"<b>{v.version}</b>" + (" <span class=\"badge ok\">serving</span>"
                                               if v.version == pushed[-1].version else ""),
                     _e(v.destination), _e(v.run_id), _e(v.model.id if v.model else None), _e(v.pushed_at)])
    out.append(_table(["version", "destination", "run", "model artifact", "pushed at"], rows))
    return "".join(out)


def _drift_section(record: Optional[DriftRecord]) -> str:
    """The last `conveyor drift` record of the served version, or "" if there is none."""
    if record is None:
        return ""
    badge = ("<span class=\"badge bad\" id=\"drift\">DRIFT</span>" if record.drift else
             "<span class=\"badge ok\" id=\"drift\">no drift</span>")
    out = [f"<h2>Serving drift</h2><p>{badge} version {_e(record.version)}: "
           f"{_e(record.requests)} logged requests vs {_e(record.training_examples)} training "
           f"examples, checked {_e(record.checked_at)} (Jensen-Shannon threshold {_e(record.threshold)}).</p>",
           _table(["feature", "JS divergence"], [[_e(k), _num(v)] for k, v in
                                                 sorted((record.js_divergence or {}).items())], (1,))]
    if record.anomalies:
        out.append("<ul class=\"reasons\">" + "".join(
            f"<li>{_e(a.feature)}: {_e(a.description)}</li>" for a in record.anomalies) + "</ul>")
    return "".join(out)


def _monitor_section(record: Optional[Dict[str, Any]]) -> str:
    """The last `conveyor monitor` record of the model (online accuracy), or "" if there is none."""
    if not record:
        return ""
    problems = record.get("problems") or []
    badge = ("<span class=\"badge bad\" id=\"monitor\">PROBLEM</span>" if problems else
             "<span class=\"badge ok\" id=\"monitor\">ok</span>")
    rows = [[_e(v.get("version")), _e(", ".join(v.get("arms") or []) or "-"), _e(v.get("n")),
             _num(v.get("accuracy")), f"{_num(v.get('wilson_low'))}-{_num(v.get('wilson_high'))}",
             _num(v.get("offline_accuracy"))] for v in record.get("versions") or []]
    out = [f"<h2>Online accuracy</h2><p>{badge} {_e(record.get('labelled'))} labelled of "
           f"{_e(record.get('predictions'))} logged predictions, checked {_e(record.get('checked_at'))}.</p>",
           _table(["version", "arms", "labelled", "accuracy", "95% CI", "offline"], rows, (2, 3, 5))]
    ab = record.get("ab_test")
    if ab:
        out.append(f"<p>A/B: canary - stable = {_num(ab.get('difference'))}, p = {_e(ab.get('p_value'))} "
                   f"({'significant' if ab.get('significant') else 'not significant'}).</p>")
    if problems:
        out.append("<ul class=\"reasons\">" + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>")
    return "".join(out)


def render(store, pipeline: Optional[str] = None, run: Optional[str] = None, home: Optional[str] = None) -> str:
    """The HTML report of one run.

    Args:
      store: an MLMD MetadataStore.
      pipeline: the pipeline name (None: the store's only pipeline).
      run: a run reference (id, unique prefix, position; None: the latest run).
      home: Conveyor HOME, for the served version's drift record (None: no drift section).
    Returns:
      one self-contained HTML document (inline CSS, SVG and PNG data URIs, no scripts, no
      external links).
    Raises:
      LineageError: unknown/ambiguous pipeline or run.
    """
    graph = Graph(store)
    pipeline = default_pipeline(graph, pipeline)
    context = resolve_run(graph, pipeline, run)
    details = run_details(graph, pipeline, context)
    edges = dag_edges(graph, pipeline)
    pushed = pushed_models(graph, pipeline)
    lin, note = None, "Nothing has been pushed for this model yet."
    if details.pushed_version:
        lin = lineage_of_version(store, pipeline, details.pushed_version)
        note = f"This run pushed version {details.pushed_version}."
    elif pushed:
        lin = lineage_of_version(store, pipeline, str(pushed[-1].version))
        note = (f"This run pushed nothing ({details.push_note or 'no push'}); the model served now is "
                f"version {pushed[-1].version}.")
    blessed = details.blessed
    verdict = ("<span class=\"badge neutral\">not evaluated</span>" if blessed is None else
               "<span class=\"badge ok\" id=\"verdict\">BLESSED</span>" if blessed else
               "<span class=\"badge bad\" id=\"verdict\">NOT BLESSED</span>")
    push = (f"pushed as version <b id=\"pushed-version\">{_e(details.pushed_version)}</b>"
            if details.pushed_version else f"not pushed ({_e(details.push_note or '-')})")
    node_rows = [[_e(n.node), f"<span style=\"color:{_COLORS.get(n.state, '#757575')}\">{_e(n.state)}</span>",
                  ("running for " if n.state == "running" else "") + _num(n.seconds, 1), _e(n.execution_id)]
                 for n in details.nodes]
    spans = run_spans(graph, {n.node: n.execution_id for n in details.nodes if n.execution_id is not None})
    data_line = (f"<p id=\"run-data\">Data of this run: {_e(spans.sentence())}</p>"
                 if spans is not None and spans.worth_showing() else "")
    drift = read_drift(home, pipeline, str(pushed[-1].version)) if home and pushed else None
    monitor = read_monitor(home, pipeline) if home else None
    generated = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    body = [f"<h1>Conveyor run report: {_e(pipeline)}</h1>",
            f"<p>Run <code id=\"run-id\">{_e(details.run_id)}</code> started {_e(details.start)}, "
            f"{'running for' if details.running else 'took'} {_num(details.duration_seconds, 1)} s. "
            f"{verdict} {push}</p>", data_line,
            "<h2>Pipeline</h2>", dag_svg(details.nodes, edges),
            "<p class=\"muted\">" + " ".join(f"<span style=\"color:{c}\">■</span> {s}" for s, c in _COLORS.items()
                                             if s in ("complete", "cached", "failed", "not run")) + "</p>",
            _table(["component", "state", "seconds", "execution"], node_rows, (2, 3)),
            _dataset_section(details, _data_pictures(graph, details)), _evaluation_section(details),
            _model_pictures_section(graph, details), _lineage_section(lin, note),
            _edge_section(lin.edge_exports if lin else None), _pushed_section(pushed), _drift_section(drift),
            _monitor_section(monitor), f"<p class=\"muted\">Generated {generated} from ML Metadata.</p>"]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Conveyor report {_e(pipeline)} {_e(details.run_id)}</title>"
            f"<style>{_CSS}</style></head><body>" + "".join(body) + "</body></html>")


def write_report(store, out: str, pipeline: Optional[str] = None, run: Optional[str] = None,
                 home: Optional[str] = None) -> str:
    """Renders the report (see render) and writes it to `out` atomically (temp file + rename).

    Returns:
      the absolute path written.
    Raises:
      LineageError: as render; OSError: the file cannot be written.
    """
    text = render(store, pipeline, run, home)
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out)
    return out


def write_run_report(config: Config, run: Optional[str] = None) -> str:
    """Writes HOME/reports/<name>-<run>.html for the latest (or given) run of config.name.

    Returns:
      the path written (the run id with characters outside [A-Za-z0-9._-] replaced by "-").
    Raises:
      LineageError: no store, pipeline or run.
    """
    store = open_store(config.home_dir, metadata=config.metadata)
    context = resolve_run(Graph(store), config.name, run)
    return write_report(store, run_report_path(config, context.name), config.name, context.name, config.home_dir)


def run_report_path(config: Config, run_id: str) -> str:
    """HOME/reports/<name>-<run id>.html, the run id's characters outside [A-Za-z0-9._-]
    replaced by "-" (where write_run_report writes a run's report)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id)
    return os.path.join(config.home_dir, "reports", f"{config.name}-{safe}.html")
