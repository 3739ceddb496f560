"""Pictures of a run for the report and `conveyor ui`: what a person looks at instead of tables.

Everything is read from what the run recorded, never by loading a model:
  * confusion matrix: TFMA's MultiClassConfusionMatrixPlot in the ModelEvaluation
    (components/evaluator.py adds it), drawn as an SVG heat map with the counts;
  * most confident mistakes: `mistakes.json` the Evaluator step wrote beside the metrics
    (components/mistakes.py), named by the ModelEvaluation's custom property;
  * training curves: the Keras TensorBoard logs in the Trainer's ModelRun artifact
    (`train/` and `validation/` event files, scalars `epoch_<metric>` per epoch);
  * data: a few sample images per class from the Examples' train split, or the histogram of
    TFDV's `text_tokens` statistics (token counts per review) for text.
Each `*_svg` / `*_html` function returns an HTML fragment in which every string that came
from MLMD or a file is escaped; images are inline `data:image/png;base64` URIs.
"""
import dataclasses
import glob
import html
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from components.mistakes import thumbnail_png_b64
from conveyor.metadata.store import Graph, props
from modules.settings import TRANSFER_PHASE_LOG

# TFMA 0.47.1 names the plot key after the metric class (multi_class_confusion_matrix_plot.py NAME).
CONFUSION_PLOT = "multi_class_confusion_matrix_plot"
NO_CLASS = -1  # TFMA's predicted_class_id when no class reaches the threshold
SAMPLES_PER_CLASS = 4
SAMPLE_SCAN_LIMIT = 3000  # examples read at most to find the samples
# Keras logs the metric under the name it was compiled with (modules/models.py: "accuracy").
ACCURACY_NAMES = ("accuracy", "sparse_categorical_accuracy", "binary_accuracy")
_COLORS = ("#1e88e5", "#fb8c00", "#43a047", "#8e24aa")


def _e(value) -> str:
    return html.escape("-" if value is None else str(value))


# confusion matrix -----------------------------------------------------------------------

@dataclasses.dataclass
class Confusion:
    """A confusion matrix: counts[actual][predicted] (float, example weights = counts),
    class_names in label-index order; `no_prediction[actual]` counts examples whose top
    probability fell below TFMA's threshold (0 with the default threshold 0)."""
    class_names: List[str]
    counts: List[List[float]]
    no_prediction: List[float]


def confusion_matrix(evaluation_uri: str, class_names: Sequence[str]) -> Optional[Confusion]:
    """The candidate's confusion matrix on all eval examples, from TFMA's plots.

    Args:
      evaluation_uri: a ModelEvaluation folder written with MultiClassConfusionMatrixPlot.
      class_names: class names in label-index order (ids beyond them get "class <id>").
    Returns:
      the Confusion of the overall slice at the first threshold, or None when the
      evaluation has no such plot (older runs) or cannot be read.
    """
    import tensorflow_model_analysis as tfma
    try:
        plots = list(tfma.load_plots(evaluation_uri))
    except Exception:  # noqa: BLE001 - no plots file: an older or failed evaluation
        return None
    for p in plots:
        if p.slice_key.single_slice_keys:
            continue
        for kv in p.plot_keys_and_values:
            if kv.key.name != CONFUSION_PLOT or kv.key.model_name == tfma.BASELINE_KEY:
                continue
            matrices = kv.value.multi_class_confusion_matrix_at_thresholds.matrices
            if not matrices:
                continue
            entries = matrices[0].entries
            n = max([len(class_names)] + [max(e.actual_class_id, e.predicted_class_id) + 1 for e in entries])
            names = list(class_names) + [f"class {i}" for i in range(len(class_names), n)]
            counts = [[0.0] * n for _ in range(n)]
            missing = [0.0] * n
            for e in entries:
                if e.predicted_class_id == NO_CLASS:
                    missing[e.actual_class_id] += e.num_weighted_examples
                else:
                    counts[e.actual_class_id][e.predicted_class_id] += e.num_weighted_examples
            return Confusion(names, counts, missing)
    return None


def confusion_svg(confusion: Confusion) -> str:
    """The matrix as an SVG heat map: rows = true class, columns = predicted class, each
    cell `g.cm-cell` (data-true, data-predicted, data-count) shaded by its share of the row
    and labelled with its count."""
    n = len(confusion.class_names)
    cell = max(26, min(56, 520 // max(1, n)))
    label_w = min(140, 14 + 7 * max(len(c) for c in confusion.class_names))
    left, top = label_w + 24, label_w + 24
    width, height = left + n * cell + 8, top + n * cell + 8
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="confusion" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="confusion matrix">',
             f'<text x="{left + n * cell / 2}" y="12" font-size="12" text-anchor="middle" fill="#616161">'
             'predicted class</text>',
             f'<text x="12" y="{top + n * cell / 2}" font-size="12" text-anchor="middle" fill="#616161" '
             f'transform="rotate(-90 12 {top + n * cell / 2})">true class</text>']
    for j, name in enumerate(confusion.class_names):
        x = left + j * cell + cell / 2
        parts.append(f'<text x="{x}" y="{top - 6}" font-size="11" text-anchor="start" '
                     f'transform="rotate(-60 {x} {top - 6})">{_e(name)}</text>')
    for i, row in enumerate(confusion.counts):
        total = sum(row) + confusion.no_prediction[i] or 1.0
        y = top + i * cell
        parts.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" font-size="11" text-anchor="end">'
                     f'{_e(confusion.class_names[i])}</text>')
        for j, count in enumerate(row):
            share = count / total
            hue = "30,136,229" if i == j else "229,57,53"
            text_color = "#fff" if share > 0.55 else "#212121"
            parts.append(f'<g class="cm-cell" data-true="{_e(confusion.class_names[i])}" '
                         f'data-predicted="{_e(confusion.class_names[j])}" data-count="{int(round(count))}">'
                         f'<title>true {_e(confusion.class_names[i])}, predicted {_e(confusion.class_names[j])}: '
                         f'{int(round(count))} ({100 * share:.0f}% of the row)</title>'
                         f'<rect x="{left + j * cell}" y="{y}" width="{cell}" height="{cell}" '
                         f'fill="rgba({hue},{0.08 + 0.92 * share:.3f})" stroke="#fff"/>'
                         f'<text x="{left + j * cell + cell / 2}" y="{y + cell / 2 + 4}" font-size="11" '
                         f'text-anchor="middle" fill="{text_color}">{int(round(count))}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


# most confident mistakes -----------------------------------------------------------------

def read_mistakes(evaluation: Optional[object]) -> Optional[Dict]:
    """The Evaluator's mistakes record (components/mistakes.py) of a ModelEvaluation MLMD
    artifact, or None when it has none (runs before it existed) or it cannot be read."""
    if evaluation is None:
        return None
    name = props(evaluation).get("mistakes_file")
    if not name:
        return None
    try:
        with open(os.path.join(evaluation.uri, os.path.basename(name)), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def text_html(text: str) -> str:
    """A review's text as HTML: every character escaped, its `<br />` tags (aclImdb marks
    paragraphs with them) shown as line breaks."""
    return "<br>".join(_e(part) for part in _BREAK.split(text or ""))


def mistakes_html(record: Dict) -> str:
    """The mistakes as a grid of figures (`figure.mistake`): thumbnail or truncated text,
    true vs predicted class and the predicted probability."""
    items = []
    for m in record.get("mistakes", []):
        if m.get("image_png_b64"):
            body = (f'<img src="data:image/png;base64,{_e(m["image_png_b64"])}" width="72" height="72" '
                    f'style="image-rendering:pixelated;object-fit:contain" alt="eval image of class {_e(m["true"])}">')
        else:
            body = f'<blockquote>{text_html(m.get("text", ""))}</blockquote>'
        items.append(f'<figure class="mistake">{body}<figcaption>true <b>{_e(m["true"])}</b>, predicted '
                     f'<b>{_e(m["predicted"])}</b> ({100 * m["probability"]:.1f}%)</figcaption></figure>')
    if not items:
        return f'<p id="no-mistakes">The model got all {_e(record.get("scored"))} eval examples right.</p>'
    head = (f'<p>{_e(record.get("wrong"))} of {_e(record.get("scored"))} eval examples are wrong; the '
            f'{len(items)} the model was surest about:</p>')
    return head + '<div class="mistakes">' + "".join(items) + "</div>"


# training curves -------------------------------------------------------------------------

def training_history(model_run_uri: str) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    """Per-epoch scalars of Keras' TensorBoard logs in a ModelRun folder.

    Returns:
      {"train" | "validation": {metric ("loss", "sparse_categorical_accuracy", ...):
       [(epoch, value), ...] sorted by epoch}}; {} when there are no logs.
    """
    import tensorflow as tf
    out: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
    for split in ("train", "validation"):
        for path in sorted(glob.glob(os.path.join(model_run_uri, split, "events.out.tfevents.*"))):
            try:
                for event in tf.compat.v1.train.summary_iterator(path):
                    for value in event.summary.value:
                        if not value.tag.startswith("epoch_"):
                            continue
                        number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                                  else value.simple_value)
                        out.setdefault(split, {}).setdefault(value.tag[len("epoch_"):], []).append(
                            (int(event.step), number))
            except (tf.errors.OpError, ValueError):
                continue
    return {s: {m: sorted(dict(v).items()) for m, v in metrics.items()} for s, metrics in out.items()}


def model_run_uri(graph: Graph, model) -> Optional[str]:
    """The ModelRun (TensorBoard logs) written by the Trainer execution that made `model`."""
    trainer = graph.producer(model) if model is not None else None
    if trainer is None:
        return None
    runs = graph.outputs(trainer).get("model_run") or []
    return runs[0].uri if runs else None


def curves_svg(series: Dict[str, List[Tuple[int, float]]], title: str, unit_range: bool = False) -> str:
    """A line chart (`svg.curve`) of named per-epoch series, e.g. {"candidate train": [(0, 0.9), ...]}.

    Args:
      series: name -> [(epoch, value)]; empty series are skipped.
      title: the chart's title (escaped).
      unit_range: fix the y axis to 0..1 (accuracies) instead of the data's range.
    """
    series = {k: v for k, v in series.items() if v}
    width, height, left, top, plot_w, plot_h = 470, 230, 46, 24, 250, 160
    epochs = [e for v in series.values() for e, _ in v] or [0]
    values = [y for v in series.values() for _, y in v] or [0.0]
    lo, hi = (0.0, 1.0) if unit_range else (min(0.0, min(values)), max(values) or 1.0)
    e0, e1 = min(epochs), max(max(epochs), min(epochs) + 1)
    x = lambda e: left + plot_w * (e - e0) / (e1 - e0)  # noqa: E731
    y = lambda v: top + plot_h * (1 - (v - lo) / ((hi - lo) or 1.0))  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="curve" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{left}" y="14" font-size="12" font-weight="600">{_e(title)}</text>']
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end" fill="#757575">'
                     f'{v:.2f}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 28}" font-size="11" text-anchor="middle" '
                 f'fill="#757575">epoch</text>')
    for e in sorted(set(epochs)):
        parts.append(f'<text x="{x(e):.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle" '
                     f'fill="#757575">{e + 1}</text>')
    for k, (name, points) in enumerate(series.items()):
        color = _COLORS[k % len(_COLORS)]
        dash = ' stroke-dasharray="5,3"' if "validation" in name else ""
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(e):.1f},{y(v):.1f}" for i, (e, v) in enumerate(points))
        parts.append(f'<path class="series" data-series="{_e(name)}" d="{path}" fill="none" stroke="{color}" '
                     f'stroke-width="2"{dash}/>')
        parts += [f'<circle cx="{x(e):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}"><title>{_e(name)} epoch {e + 1}: '
                  f'{v:.4f}</title></circle>' for e, v in points]
        ly = top + 10 + 18 * k
        parts.append(f'<line x1="{left + plot_w + 12}" x2="{left + plot_w + 30}" y1="{ly}" y2="{ly}" '
                     f'stroke="{color}" stroke-width="2"{dash}/><text x="{left + plot_w + 34}" y="{ly + 4}" '
                     f'font-size="11">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def training_curves_html(candidate: Dict, baseline: Optional[Dict]) -> str:
    """Loss and accuracy charts per epoch, train and validation, candidate vs baseline
    (histories as returned by training_history; baseline None or {} = not drawn)."""
    charts = []
    for metrics, title, unit in ((("loss",), "loss", False), (ACCURACY_NAMES, "accuracy", True)):
        series = {}
        for who, history in (("candidate", candidate), ("baseline", baseline or {})):
            for split in ("train", "validation"):
                logged = history.get(split, {})
                points = next((logged[m] for m in metrics if logged.get(m)), None)
                if points:
                    series[f"{who} {split}"] = points
        if series:
            charts.append(curves_svg(series, title, unit))
    return "".join(charts)


def transfer_phases_html(history: Dict) -> str:
    """Which epochs of a transfer model trained its head (backbone frozen) and which
    fine-tuned the backbone, from the TRANSFER_PHASE_LOG scalar of its TensorBoard logs
    (history as returned by training_history); "" for other models."""
    points = history.get("train", {}).get(TRANSFER_PHASE_LOG) or []
    phases = [([e + 1 for e, v in points if (v >= 0.5) == fine], what) for fine, what in (
        (False, "trained the new head with the backbone frozen"),
        (True, "fine-tuned the backbone's top layers with it, at the lower fine-tuning learning rate"))]
    said = [f"epoch{'s' if len(epochs) > 1 else ''} {epochs[0]}{f'-{epochs[-1]}' if len(epochs) > 1 else ''} {what}"
            for epochs, what in phases if epochs]
    return f"<p id=\"transfer-phases\">Transfer learning: {'; '.join(said)}.</p>" if said else ""


# data ------------------------------------------------------------------------------------

def sample_images(examples_uri: str, class_names: Sequence[str], per_class: int = SAMPLES_PER_CLASS,
                  split: str = "train") -> Dict[str, List[bytes]]:
    """Up to `per_class` encoded images per class (in label order) from the first
    SAMPLE_SCAN_LIMIT examples of a split; {} for Examples without `image_raw`."""
    from modules import features as F
    from modules.splits import read_split_examples, split_pattern
    found: Dict[str, List[bytes]] = {}
    for example in read_split_examples(split_pattern(examples_uri, split), limit=SAMPLE_SCAN_LIMIT):
        feature = example.features.feature
        if not feature[F.IMAGE_RAW].bytes_list.value:
            return {}
        label = feature[F.LABEL].int64_list.value[0]
        name = class_names[label] if label < len(class_names) else f"class {label}"
        if len(found.setdefault(name, [])) < per_class:
            found[name].append(feature[F.IMAGE_RAW].bytes_list.value[0])
        if len(found) == len(class_names) and all(len(v) >= per_class for v in found.values()):
            break
    order = {n: i for i, n in enumerate(class_names)}
    return dict(sorted(found.items(), key=lambda kv: order.get(kv[0], len(order))))


def samples_html(samples: Dict[str, List[bytes]]) -> str:
    """A table row per class (`tr.samples`) with its sample thumbnails."""
    rows = []
    for name, images in samples.items():
        cells = "".join(f'<img src="data:image/png;base64,{thumbnail_png_b64(b, 64)}" width="48" height="48" '
                        f'style="image-rendering:pixelated;object-fit:contain;margin:1px" alt="{_e(name)}">'
                        for b in images)
        rows.append(f'<tr class="samples"><td><b>{_e(name)}</b></td><td>{cells}</td></tr>')
    return "<table><thead><tr><th>class</th><th>sample images (train split)</th></tr></thead><tbody>" + \
        "".join(rows) + "</tbody></table>"


def token_histogram(graph: Graph, statistics, split: str = "train") -> List[Tuple[float, float, float]]:
    """[(low, high, count)] buckets of the `text_tokens` profile feature (whitespace tokens
    per text) from TFDV's statistics of one split; [] when the statistics have no such feature."""
    from conveyor.metadata.artifacts import load_split_statistics
    from modules import features as F
    try:
        stats = load_split_statistics(graph, statistics, split)
    except Exception:  # noqa: BLE001 - split missing or unreadable: no histogram
        return []
    for dataset in getattr(stats, "datasets", [stats]):
        for feature in dataset.features:
            if feature.path.step and feature.path.step[-1] == F.TEXT_TOKENS:
                for h in feature.num_stats.histograms:
                    if h.type == h.STANDARD:
                        return [(b.low_value, b.high_value, b.sample_count) for b in h.buckets]
    return []


def histogram_svg(buckets: List[Tuple[float, float, float]], title: str) -> str:
    """Bars (`rect.hist-bar`) of [(low, high, count)] buckets with their ranges on the x axis."""
    width, height, left, top, plot_w, plot_h = 460, 220, 46, 24, 390, 150
    peak = max([c for _, _, c in buckets] or [1]) or 1
    bar_w = plot_w / max(1, len(buckets))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="histogram" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{left}" y="14" font-size="12" font-weight="600">{_e(title)}</text>']
    for i, (low, high, count) in enumerate(buckets):
        h = plot_h * count / peak
        parts.append(f'<rect class="hist-bar" x="{left + i * bar_w:.1f}" y="{top + plot_h - h:.1f}" '
                     f'width="{max(1.0, bar_w - 2):.1f}" height="{h:.1f}" fill="#64b5f6"><title>{low:.0f}-{high:.0f} '
                     f'tokens: {count:.0f} texts</title></rect>')
        if i % max(1, len(buckets) // 5) == 0:
            parts.append(f'<text x="{left + i * bar_w:.1f}" y="{top + plot_h + 14}" font-size="10" '
                         f'fill="#757575">{low:.0f}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 32}" font-size="11" text-anchor="middle" '
                 f'fill="#757575">tokens per text</text><text x="{left - 4}" y="{top + 8}" font-size="10" '
                 f'text-anchor="end" fill="#757575">{peak:.0f}</text></svg>')
    return "".join(parts)
