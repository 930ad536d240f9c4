"""Plotly figures for leukviz: pure functions from run events and metric tables to `go.Figure`."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from leukviz.core.events import EPOCH, START, batch_events, epoch_events, finite
from leukviz.models import backbones

# Mid-tone colours readable on both light and dark backgrounds; no template or background is set here
# so the caller (Streamlit's theme, or Plotly's default) decides the rest.
TRAIN_COLOR = "#1F77B4"
VAL_COLOR = "#FF7F0E"
NEUTRAL_COLOR = "#9E9E9E"
CLASS_COLORS = {"all": "#D62728", "hem": "#2CA02C"}
PALETTE = ("#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52",
           "#8C564B", "#BCBD22", "#17BECF")

WAITING_TEXT = "Waiting for the first batch…"

# Labels for the epoch-event keys of metrics.jsonl; the fraction-valued ones are drawn as percentages.
METRIC_LABELS = {"train_loss": "train loss", "val_loss": "validation loss", "train_acc": "train accuracy",
                 "val_acc": "validation accuracy", "val_f1": "validation weighted F1", "lr": "learning rate",
                 "seconds": "seconds per epoch", "images_per_s": "images / s"}
FRACTION_METRICS = {"train_acc", "val_acc", "val_f1"}

# Series of the live training chart (training_curves), each told apart by colour AND line style, so that no
# two share a look: train series are cool hues and solid, validation ones warm and dashed or dotted, the
# running (per-batch) ones thin and without markers. Every colour is mid-luminance, with a contrast of at
# least 3:1 against both Streamlit's light (#FFFFFF) and dark (#0E1117) background, and is drawn opaque.
CURVE_BACKGROUNDS = ("#FFFFFF", "#0E1117")


@dataclass(frozen=True)
class Series:
    """One line of training_curves: the event key it reads, its legend name, colour and look."""

    key: str
    name: str
    color: str
    dash: str = "solid"
    symbol: str | None = None  # marker symbol; None: a line only
    width: float = 2.5


LOSS_SERIES = (
    Series("loss", "train loss (running)", "#3C8DDC", width=1.5),  # running mean over the epoch so far
    Series("train_loss", METRIC_LABELS["train_loss"], "#7570B3", symbol="circle"),
    Series("val_loss", METRIC_LABELS["val_loss"], "#D95F02", dash="dash", symbol="diamond"),
)
ACCURACY_SERIES = (
    Series("acc", "train accuracy (running)", "#1A9E9E", width=1.5),
    Series("train_acc", METRIC_LABELS["train_acc"], "#2CA02C", symbol="circle"),
    Series("val_acc", METRIC_LABELS["val_acc"], "#E7298A", dash="dash", symbol="diamond"),
    Series("val_f1", METRIC_LABELS["val_f1"], "#B8860B", dash="dot", symbol="square"),
)
CURVES_SPACING = 0.1  # fraction of the width between the two subplots

# Every figure can be saved for print: Plotly's camera button saves it in the browser (no server-side
# renderer to install), as PNG at three times the screen's pixels or as SVG (vector).
IMAGE_FORMATS = ("png", "svg")
PNG_SCALE = 3


def image_filename(name: str) -> str:
    """A figure's download name: "leukviz-" and its name in lower-case words joined by '-'."""
    return "leukviz-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "figure")


def figure_config(name: str, image_format: str = "png") -> dict[str, Any]:
    """Plotly's config for a figure on a page: its camera button saves `image_format`, named after `name`."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format {image_format!r}: one of {', '.join(IMAGE_FORMATS)}")
    return {"displaylogo": False,
            "toImageButtonOptions": {"format": image_format, "filename": image_filename(name),
                                     "scale": PNG_SCALE if image_format == "png" else 1}}


def _palette_color(name: str) -> str:
    # crc32 rather than hash(): Python salts str hashes per process, and colours must survive reruns.
    return PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


def backbone_color(name: str) -> str:
    """Colour of a backbone or run name: its registry entry's colour, found by the backbone's name or
    title, also as a prefix ("resnet50 · a1b2", "ResNet50 · a1b2"); otherwise a stable palette colour
    chosen from the name."""
    key = name.lower()
    for spec in backbones.BACKBONES.values():
        if any(key == k or key.startswith(k) for k in (spec.name.lower(), spec.title.lower())):
            return spec.color
    return _palette_color(key)


def class_color(name: str) -> str:
    """Colour of a class: red for `all` (blast), green for `hem` (normal), otherwise from the palette."""
    return CLASS_COLORS.get(name.lower(), _palette_color(name.lower()))


def _distinct_colors(names: Iterable[str]) -> dict[str, str]:
    """backbone_color per name, except that a name whose colour is taken gets the next free palette
    colour, so two runs of one backbone overlaid stay distinguishable."""
    used: set[str] = set()
    out: dict[str, str] = {}
    for name in names:
        color = backbone_color(name)
        if color in used:
            color = next((c for c in PALETTE if c not in used), color)
        used.add(color)
        out[name] = color
    return out



def batch_x(event: dict) -> float:
    """Fractional epoch of a batch event: epoch - 1 + step / steps, so epoch 1 ends at x = 1 where
    its epoch event is drawn."""
    steps = event.get("steps") or 0
    return int(event["epoch"]) - 1 + (int(event["step"]) / steps if steps else 0.0)


def _waiting(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 16})
    return fig


def _add_series(fig: go.Figure, series: Series, x: list[float], events: list[dict], col: int) -> None:
    """One Series as a line on subplot `col`, in that subplot's legend group, its hover value formatted for
    the subplot (loss to 4 decimals, accuracy and F1 as a percentage)."""
    y = [finite(e.get(series.key)) for e in events]
    if all(v is None for v in y):
        return  # a metric this run never recorded (an older run without F1): no empty legend entry
    # A line needs two points: the first live point of a line-only series is drawn as a dot until the second.
    alone = series.symbol is None and sum(v is not None for v in y) == 1
    fig.add_trace(go.Scatter(
        x=x, y=y, name=series.name, mode="lines+markers" if series.symbol or alone else "lines",
        line={"color": series.color, "width": series.width, "dash": series.dash},
        marker={"color": series.color, "symbol": series.symbol or "circle", "size": 8 if series.symbol else 6},
        legendgroup=f"col{col}", legendgrouptitle={"text": "<b>Loss</b>" if col == 1 else "<b>Accuracy</b>"},
        hovertemplate="%{y:.4f}" if col == 1 else "%{y:.1%}"), row=1, col=col)


def training_curves(events: list[dict], title: str = "", height: int | None = None) -> go.Figure:
    """Live training chart from metrics.jsonl events: Loss (left) and Accuracy with weighted F1 (right)
    against epoch.

    Epoch-level train and validation values are drawn as lines with markers at x = epoch; the running
    per-batch train loss and accuracy (the mean over the epoch so far) as thin lines at fractional epochs
    in between. Each series has its own colour and line style (LOSS_SERIES, ACCURACY_SERIES); the legend,
    right of both plots, lists them in two titled groups, and the hover box lists every series of the
    subplot under the cursor with its full name.
    """
    # The subplot titles name each y axis, so no axis title stands in the gap beside the accuracy plot.
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy and weighted F1"),
                        horizontal_spacing=CURVES_SPACING)
    epochs = epoch_events(events)
    batches = batch_events(events)
    bx = [batch_x(b) for b in batches]
    ex = [int(e["epoch"]) for e in epochs]
    for col, group in ((1, LOSS_SERIES), (2, ACCURACY_SERIES)):
        for series in group:
            if series.key in ("loss", "acc"):
                _add_series(fig, series, bx, batches, col)
            else:
                _add_series(fig, series, ex, epochs, col)

    # The planned number of epochs fixes the x range, so the axes do not jump as a live run grows.
    planned = max((int(e.get("epochs") or 0) for e in events if e.get("type") in (START, EPOCH)),
                  default=0)
    if planned:
        fig.update_xaxes(range=[0, planned + 0.05])
    fig.update_xaxes(title_text="epoch", hoverformat=".2f", unifiedhovertitle={"text": "epoch %{x:.2f}"})
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    fig.update_layout(
        title=title or None, height=height, uirevision="training-curves",
        # One legend right of both plots, in two titled groups, so nothing sits in the gap between them.
        legend={"tracegroupgap": 14, "groupclick": "toggleitem", "yanchor": "top", "y": 1},
        # One hover box per subplot listing every series at that epoch, names never cut short.
        hovermode="x unified", hoverlabel={"namelength": -1},
        margin={"t": 80 if title else 40, "b": 50})
    if not epochs and not batches:
        # Empty axes would show Plotly's arbitrary default ranges: only the titles and the waiting text.
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        _waiting(fig, WAITING_TEXT)
    return fig


def lr_find_figure(result: dict, current: float | None = None) -> go.Figure:
    """The learning-rate finder's sweep (lrfind.sweep's result): the loss against the rate on a log axis,
    raw (faint) and smoothed, with a tenth of the minimum marked and, when given, the rate on screen."""
    fig = go.Figure()
    lrs = result.get("rates") or []
    fig.add_trace(go.Scatter(x=lrs, y=[finite(v) for v in result.get("losses") or []], mode="lines",
                             name="loss (each step)", line={"color": TRAIN_COLOR, "width": 1}, opacity=0.35))
    fig.add_trace(go.Scatter(x=lrs, y=[finite(v) for v in result.get("smoothed") or []], mode="lines",
                             name="loss (smoothed)", line={"color": TRAIN_COLOR, "width": 2.5}))
    suggestion = finite(result.get("suggestion"))
    if suggestion and lrs:
        y = float(np.interp(math.log10(suggestion), np.log10(lrs), result["smoothed"]))
        fig.add_trace(go.Scatter(x=[suggestion], y=[y], mode="markers", name=f"a tenth of the minimum {suggestion:.2g}",
                                 marker={"color": VAL_COLOR, "size": 12, "symbol": "diamond"}))
    if current and lrs and lrs[0] <= current <= lrs[-1]:
        y = float(np.interp(math.log10(current), np.log10(lrs), result["smoothed"]))
        fig.add_trace(go.Scatter(x=[current], y=[y], mode="markers", name=f"your rate {current:g}",
                                 marker={"color": NEUTRAL_COLOR, "size": 12, "symbol": "circle-open",
                                         "line": {"width": 3}}))
    fig.update_xaxes(type="log", title_text="learning rate", exponentformat="power")
    fig.update_yaxes(title_text="training loss")
    fig.update_layout(hovermode="x unified", height=340, margin={"t": 30})
    if not lrs:
        _waiting(fig, "No step of the sweep finished.")
    return fig


def compare_curves(histories: dict[str, list[dict]], metric: str = "val_acc") -> go.Figure:
    """One line per run (name -> its metrics.jsonl events) of an epoch-event metric against epoch."""
    fig = go.Figure()
    colors = _distinct_colors(histories)
    for name, events in histories.items():
        epochs = [e for e in epoch_events(events) if finite(e.get(metric)) is not None]
        if not epochs:
            continue
        fig.add_trace(go.Scatter(x=[int(e["epoch"]) for e in epochs], y=[finite(e[metric]) for e in epochs],
                                 mode="lines+markers", name=name, line={"color": colors[name], "width": 2.5}))
    label = METRIC_LABELS.get(metric, metric)
    fig.update_layout(title=label.capitalize(), xaxis_title="epoch", yaxis_title=label, hovermode="x unified")
    fig.update_xaxes(dtick=1)
    if metric in FRACTION_METRICS:
        fig.update_yaxes(tickformat=".0%")
    if not fig.data:
        _waiting(fig, f"No {label} recorded yet")
    return fig


def _auc_text(auc: float | None) -> str:
    auc = finite(auc)
    return "AUC n/a" if auc is None else f"AUC {auc:.3f}"


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> go.Figure:
    """ROC curves, name -> (fpr, tpr, auc), over a dashed chance diagonal; the legend shows each AUC."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                             line={"color": NEUTRAL_COLOR, "dash": "dash", "width": 1}))
    colors = _distinct_colors(curves)
    for name, (fpr, tpr, auc) in curves.items():
        fig.add_trace(go.Scatter(x=np.asarray(fpr, dtype=float), y=np.asarray(tpr, dtype=float),
                                 mode="lines", name=f"{name} ({_auc_text(auc)})",
                                 line={"color": colors[name], "width": 2.5}))
    fig.update_layout(title="ROC", xaxis_title="false positive rate (1 - specificity)",
                      yaxis_title="true positive rate (sensitivity)")
    fig.update_xaxes(range=[0, 1], constrain="domain")
    # Equal scales so the curve's shape, and the diagonal's 45°, are not distorted.
    fig.update_yaxes(range=[0, 1.0], scaleanchor="x", scaleratio=1, constrain="domain")
    return fig


def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str = "") -> go.Figure:
    """Confusion-matrix heatmap: true class on y (top to bottom), predicted on x; each cell shows its
    count and its share of the true class's row."""
    cm = np.asarray(cm)
    classes = [str(c) for c in classes]
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {len(classes)} classes {classes}")
    rows = cm.sum(axis=1)
    # A class absent from the true labels has an all-zero row with no share to show.
    text = [[f"{int(c)}<br>({c / total:.1%})" if total else f"{int(c)}" for c in row]
            for row, total in zip(cm, rows, strict=True)]
    fig = go.Figure(go.Heatmap(z=cm, x=classes, y=classes, text=text, texttemplate="%{text}",
                               colorscale="Blues", showscale=False,
                               hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
    fig.update_layout(title=title or None, xaxis_title="predicted", yaxis_title="true")
    fig.update_xaxes(type="category", side="bottom")
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


def probability_bars(probs: dict[str, float], title: str = "") -> go.Figure:
    """Horizontal bars of class probabilities (fractions 0..1, drawn as 0..100 %), the top class in its
    class colour and the others grey."""
    names = [str(k) for k in probs]
    values = [(finite(v) or 0.0) * 100 for v in probs.values()]
    top = int(np.argmax(values)) if values else -1
    colors = [class_color(n) if i == top else NEUTRAL_COLOR for i, n in enumerate(names)]
    # labels level, always readable: inside a long bar at its end, outside a short one (never rotated)
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", marker_color=colors,
                           text=[f"{v:.1f} %" for v in values], textangle=0, cliponaxis=False,
                           textposition=["inside" if v >= 25 else "outside" for v in values],
                           insidetextanchor="end", hovertemplate="%{y}: %{x:.1f} %<extra></extra>"))
    fig.update_layout(title=title or None, xaxis_title="probability (%)", showlegend=False, uniformtext_minsize=10)
    fig.update_xaxes(range=[0, 100], tickvals=[0, 25, 50, 75, 100], ticksuffix=" %")  # the whole axis, to 100 %
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


def reliability_figure(bins: pd.DataFrame, after: pd.DataFrame | None = None) -> go.Figure:
    """Reliability diagram from `metrics.reliability_bins`: accuracy against mean confidence of each
    non-empty bin, over the diagonal of perfect calibration; with `after`, the same bins after temperature
    scaling as a second line."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line={"color": NEUTRAL_COLOR, "dash": "dash", "width": 1}))
    lines = [("model" if after is None else "raw", bins, TRAIN_COLOR)]
    if after is not None:
        lines.append(("calibrated (temperature)", after, VAL_COLOR))
    for name, table, color in lines:
        full = table[table["count"] > 0]
        fig.add_trace(go.Scatter(x=full["confidence"].to_numpy(float), y=full["accuracy"].to_numpy(float),
                                 mode="lines+markers", name=name, line={"color": color, "width": 2.5},
                                 customdata=full["count"].to_numpy(int),
                                 hovertemplate="confidence %{x:.1%}<br>accuracy %{y:.1%}<br>"
                                               "%{customdata} images<extra></extra>"))
    fig.update_layout(title="Reliability", xaxis_title="confidence (top-class probability)",
                      yaxis_title="accuracy")
    fig.update_xaxes(range=[0, 1], tickformat=".0%", constrain="domain")
    fig.update_yaxes(range=[0, 1.0], tickformat=".0%", scaleanchor="x", scaleratio=1, constrain="domain")
    return fig


def per_subject_figure(df: pd.DataFrame, classes: Sequence[str] | None = None) -> go.Figure:
    """Bar per subject of its cell accuracy (from `metrics.per_subject`), coloured by the subject's
    class; `classes` names the integer labels. Subjects keep the table's order (worst first)."""
    order = [str(s) for s in df["subject"]]

    def class_name(label: Any) -> str:
        if classes is not None and isinstance(label, (int, np.integer)) and 0 <= int(label) < len(classes):
            return str(classes[int(label)])
        return str(label)

    names = df["label"].map(class_name)
    fig = go.Figure()
    for name in dict.fromkeys(names):
        part = df[names == name]
        fig.add_trace(go.Bar(x=part["subject"].astype(str), y=part["accuracy"].to_numpy(float), name=name,
                             marker_color=class_color(name), customdata=part["n"].to_numpy(int),
                             hovertemplate="subject %{x}: %{y:.1%} of %{customdata} cells<extra></extra>"))
    fig.update_layout(title="Accuracy per subject", xaxis_title="subject", yaxis_title="cell accuracy",
                      legend_title_text="class")
    # One trace per class, each subject in one of them: "overlay" stops Plotly reserving a side-by-side
    # slot per trace in every category, which would draw thin, off-centre bars.
    fig.update_layout(barmode="overlay")
    # Subject ids like "11" must stay categories, in the table's order rather than numeric order.
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=order)
    fig.update_yaxes(range=[0, 1.0], tickformat=".0%")
    return fig


def interval_figure(scores: Sequence[dict], score: str = "weighted_f1", label: str = "weighted F1") -> go.Figure:
    """One score per model and set (compare.Report.to_dict()["scores"]): the mean over seeds as a dot, its
    95 % subject-bootstrap interval as the error bar, and each seed's value as a small point (on hover)."""
    fig = go.Figure()
    for which, symbol in (("val", "circle"), ("test", "diamond")):
        part = [s for s in scores if s["set"] == which]
        if not part:
            continue
        names = [wrap_label(s["model"]) for s in part]
        mean = [finite(s["spread"][score]["mean"]) for s in part]
        ci = [s["interval"]["scores"].get(score) or {} for s in part]
        high = [None if m is None or c.get("high") is None else c["high"] - m for m, c in zip(mean, ci)]
        low = [None if m is None or c.get("low") is None else m - c["low"] for m, c in zip(mean, ci)]
        set_name = "validation" if which == "val" else "test (held out)"
        fig.add_trace(go.Scatter(
            x=names, y=mean, mode="markers", name=f"{set_name}: mean, 95 % CI", marker={"size": 11, "symbol": symbol},
            offsetgroup=which,
            error_y={"type": "data", "symmetric": False, "array": high, "arrayminus": low, "thickness": 1.5},
            customdata=[[c.get("low"), c.get("high")] for c in ci],
            hovertemplate="%{x}<br>mean %{y:.3f}<br>95 % CI %{customdata[0]:.3f} to %{customdata[1]:.3f}<extra></extra>"))
        xs, ys, text = [], [], []
        for s in part:
            for seed, v in zip(s["seeds"], s["spread"][score].get("values") or []):
                xs.append(wrap_label(s["model"]))
                ys.append(finite(v))
                text.append(f"seed {seed}")
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"{set_name}: each seed", text=text,
                                     offsetgroup=which,
                                     marker={"size": 6, "symbol": symbol, "opacity": 0.55, "color": NEUTRAL_COLOR},
                                     hovertemplate="%{x}<br>%{text}: %{y:.3f}<extra></extra>"))
    # the legend above the plot, the model names (wrapped at " · ") below it: they never meet
    fig.update_layout(yaxis_title=label, legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
                      margin={"t": 40}, scattermode="group")  # validation and test of one model side by side
    fig.update_xaxes(automargin=True, tickangle=0)
    return fig


def wrap_label(name: str) -> str:
    """A model's name on an axis: 'GoogLeNet ·<br>32 px, 1 epoch' (a line per part), so many models' names
    stand side by side without turning or overlapping."""
    return str(name).replace(" · ", " ·<br>").replace(", ", ",<br>")
