"""Tests for leukviz.charts: every figure builds from small synthetic inputs with the right traces."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from leukviz.app import charts
from leukviz.models import backbones
from leukviz.scoring import metrics


def batch(epoch: int, step: int, steps: int = 4, loss: float = 0.7, acc: float = 0.5) -> dict:
    return {"type": "batch", "epoch": epoch, "step": step, "steps": steps, "loss": loss, "acc": acc,
            "lr": 1e-3, "time": 0.0}


def epoch(n: int, val_loss: float | None = 0.5, **kw: float) -> dict:
    event = {"type": "epoch", "epoch": n, "epochs": 3, "train_loss": 0.6, "train_acc": 0.7,
             "val_loss": val_loss, "val_acc": 0.75, "val_f1": 0.74, "lr": 1e-3, "seconds": 1.0,
             "images_per_s": 10.0, "time": 0.0}
    event.update(kw)
    return event


def run_events() -> list[dict]:
    """A live run: epoch 1 finished, epoch 2 half-way."""
    return ([{"type": "start", "epoch": 0, "epochs": 3, "steps_per_epoch": 4, "device": "cpu", "time": 0.0}]
            + [batch(1, s, loss=0.8 - 0.05 * s) for s in range(1, 5)]
            + [epoch(1, val_loss=0.55, train_loss=0.62, val_acc=0.8, train_acc=0.66)]
            + [batch(2, s, loss=0.5) for s in (1, 2)])


def traces(fig) -> dict:
    return {t.name: t for t in fig.data}


def annotation_texts(fig) -> list[str]:
    return [a.text for a in fig.layout.annotations]


RUN_TRACES = {"train loss (running)", "train loss", "validation loss", "train accuracy (running)",
              "train accuracy", "validation accuracy", "validation weighted F1"}


def test_training_curves_traces_and_values() -> None:
    fig = charts.training_curves(run_events(), title="resnet50")
    t = traces(fig)
    assert set(t) == RUN_TRACES and len(fig.data) == len(RUN_TRACES)
    assert list(t["validation loss"].y) == [0.55]
    assert list(t["train loss"].y) == [0.62]
    assert list(t["validation accuracy"].y) == [0.8] and list(t["validation loss"].x) == [1]
    assert list(t["validation weighted F1"].y) == [0.74]
    assert list(t["train loss (running)"].x) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    assert list(t["train loss (running)"].y) == pytest.approx([0.75, 0.7, 0.65, 0.6, 0.5, 0.5])
    assert list(t["train accuracy (running)"].y) == pytest.approx([0.5] * 6)
    # Loss on the left subplot, accuracy and F1 on the right one shown in percent.
    for name, trace in t.items():
        assert trace.xaxis == ("x" if "loss" in name else "x2"), name
    assert t["train loss (running)"].line.width < t["train loss"].line.width
    assert fig.layout.yaxis2.tickformat == ".0%" and tuple(fig.layout.yaxis2.range) == (0, 1.02)
    # The x range covers the planned 3 epochs from the start, so it does not jump while training.
    assert fig.layout.xaxis.range[1] >= 3 and fig.layout.xaxis2.range[1] >= 3
    assert fig.layout.title.text == "resnet50"
    assert charts.WAITING_TEXT not in annotation_texts(fig)
    json.loads(fig.to_json())


def test_training_curves_series_look_distinct() -> None:
    fig = charts.training_curves(run_events())
    t = traces(fig)
    colors = [tr.line.color for tr in fig.data]
    assert len(set(colors)) == len(colors), colors  # no two series share a colour, across both plots
    # Within each plot every series also has its own look (dash, markers, width), not only its own colour.
    for axis in ("x", "x2"):
        plot = [tr for tr in fig.data if tr.xaxis == axis]
        looks = {(tr.line.dash, tr.mode, tr.marker.symbol if "markers" in tr.mode else None, tr.line.width)
                 for tr in plot}
        assert len(plot) >= 3 and len(looks) == len(plot), axis
    for name, tr in t.items():
        assert tr.marker.color in (None, tr.line.color), name  # markers in their line's colour
        assert tr.opacity in (None, 1), name  # drawn opaque: a faded line vanishes on a dark background
        if name.startswith("validation"):
            assert tr.line.dash in ("dash", "dot", "dashdot"), name
        else:
            assert tr.line.dash == "solid", name
        if "running" in name:
            assert tr.mode == "lines", name
        else:
            assert tr.mode == "lines+markers", name
    # The legend names each series once, grouped by the plot it belongs to.
    assert {tr.legendgroup for tr in fig.data if "loss" in tr.name} != {tr.legendgroup for tr in fig.data
                                                                      if "loss" not in tr.name}
    assert fig.layout.legend.x is None or fig.layout.legend.x >= 1  # right of both plots, not between them


def _luminance(color: str) -> float:
    channels = [int(color.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a: str, b: str) -> float:
    dark, light = sorted((_luminance(a), _luminance(b)))
    return (light + 0.05) / (dark + 0.05)


def test_contrast_helper() -> None:
    assert _contrast("#FFFFFF", "#000000") == pytest.approx(21)
    assert _contrast("#1F77B4", "#1F77B4") == pytest.approx(1)


def test_training_curves_colours_legible_in_light_and_dark_theme() -> None:
    fig = charts.training_curves(run_events())
    assert charts.CURVE_BACKGROUNDS == ("#FFFFFF", "#0E1117")  # Streamlit's light and dark backgrounds
    for tr in fig.data:
        for background in charts.CURVE_BACKGROUNDS:
            # WCAG's 3:1 for graphics: the old navy running loss (#1F77B4 at half opacity) failed on dark.
            assert _contrast(tr.line.color, background) >= 3, (tr.name, tr.line.color, background)


def test_training_curves_subplots_and_titles_do_not_collide() -> None:
    fig = charts.training_curves(run_events(), title="resnet50")
    left, right = fig.layout.xaxis.domain, fig.layout.xaxis2.domain
    # The gap holds the accuracy ticks (up to "100%"): 8 % of the width, about 100 px at 1300 px.
    assert right[0] - left[1] >= 0.08
    # No axis title in that gap (the old "accuracy" title overlapped the loss plot): subplot titles name them.
    assert not fig.layout.yaxis2.title.text and not fig.layout.yaxis.title.text
    titles = {a.text: a for a in fig.layout.annotations}
    assert {"Loss", "Accuracy and weighted F1"} <= set(titles)
    assert left[0] < titles["Loss"].x < left[1] and right[0] < titles["Accuracy and weighted F1"].x < right[1]
    assert titles["Loss"].xanchor == titles["Accuracy and weighted F1"].xanchor == "center"
    # With a figure title, the top margin leaves room for it above the subplot titles.
    assert fig.layout.margin.t > charts.training_curves(run_events()).layout.margin.t
    assert fig.layout.xaxis.title.text == fig.layout.xaxis2.title.text == "epoch"


def test_training_curves_hover_shows_full_names_and_formatted_values() -> None:
    fig = charts.training_curves(run_events())
    assert fig.layout.hovermode == "x unified"
    assert fig.layout.hoverlabel.namelength == -1  # Plotly cuts names at 15 characters by default
    for tr in fig.data:
        assert tr.hovertemplate == ("%{y:.4f}" if "loss" in tr.name else "%{y:.1%}"), tr.name
    assert fig.layout.xaxis.hoverformat == ".2f"  # fractional epochs of the running curves


def test_training_curves_only_batches() -> None:
    fig = charts.training_curves([batch(1, 1), batch(1, 2)])
    t = traces(fig)
    assert set(t) == {"train loss (running)", "train accuracy (running)"}
    assert list(t["train loss (running)"].x) == pytest.approx([0.25, 0.5])
    assert charts.WAITING_TEXT not in annotation_texts(fig)
    assert fig.layout.xaxis.visible is not False
    fig.to_json()


@pytest.mark.parametrize("events", [[], [{"type": "start", "epoch": 0, "epochs": 2, "steps_per_epoch": 3}]])
def test_training_curves_waiting(events: list[dict]) -> None:
    fig = charts.training_curves(events)
    assert len(fig.data) == 0
    assert charts.WAITING_TEXT in annotation_texts(fig)
    # No empty axes with arbitrary ranges: only the subplot titles and the waiting text.
    assert fig.layout.xaxis.visible is False and fig.layout.yaxis2.visible is False
    fig.to_json()


def test_training_curves_resumed_run_and_missing_validation() -> None:
    events = [epoch(1, val_loss=0.9), epoch(2, val_loss=None), epoch(1, val_loss=0.4)]
    t = traces(charts.training_curves(events))
    # The repeated epoch 1 (after a resume) replaces the first one; a missing value is a gap.
    assert list(t["validation loss"].x) == [1, 2]
    assert list(t["validation loss"].y) == [0.4, None]


def test_training_curves_leaves_out_a_metric_never_recorded() -> None:
    events = [epoch(1, val_f1=None), epoch(2, val_f1=None)]  # a run from before F1 was reported
    t = traces(charts.training_curves(events))
    assert "validation weighted F1" not in t and "validation accuracy" in t


def test_compare_curves() -> None:
    histories = {"resnet50": [epoch(1, val_acc=0.6), epoch(2, val_acc=0.7)],
                 "vgg16": [epoch(1, val_acc=0.5)],
                 "resnet50 (lr 1e-4)": [epoch(1, val_acc=0.65)],
                 "empty": [batch(1, 1)]}
    fig = charts.compare_curves(histories)
    t = traces(fig)
    assert list(t) == ["resnet50", "vgg16", "resnet50 (lr 1e-4)"]
    assert list(t["resnet50"].y) == [0.6, 0.7] and list(t["resnet50"].x) == [1, 2]
    assert t["resnet50"].line.color == backbones.get_spec("resnet50").color
    assert t["vgg16"].line.color == backbones.get_spec("vgg16").color
    # Two runs of one backbone overlaid must not share a colour.
    assert len({tr.line.color for tr in fig.data}) == 3
    assert fig.layout.yaxis.tickformat == ".0%"
    loss = charts.compare_curves(histories, metric="val_loss")
    assert loss.layout.yaxis.tickformat is None and list(traces(loss)["vgg16"].y) == [0.5]
    fig.to_json()


def test_compare_curves_nothing_yet() -> None:
    fig = charts.compare_curves({"googlenet": [batch(1, 1)]}, metric="val_f1")
    assert len(fig.data) == 0 and any("validation weighted F1" in a for a in annotation_texts(fig))


def test_backbone_colors_are_stable() -> None:
    assert charts.backbone_color("googlenet") == backbones.get_spec("googlenet").color
    assert charts.backbone_color("ResNet50 · a1b2") == backbones.get_spec("resnet50").color
    other = charts.backbone_color("efficientnet_b0")
    assert other in charts.PALETTE and other == charts.backbone_color("efficientnet_b0")
    assert charts.class_color("all") != charts.class_color("hem")


def test_roc_figure() -> None:
    curves = {"resnet50": (np.array([0, 0, 0.5, 1]), np.array([0, 0.5, 1, 1]), 0.875),
              "googlenet": (np.array([]), np.array([]), float("nan"))}
    fig = charts.roc_figure(curves)
    names = [t.name for t in fig.data]
    assert names == ["chance", "resnet50 (AUC 0.875)", "googlenet (AUC n/a)"]
    assert list(fig.data[0].x) == [0, 1] and fig.data[0].line.dash == "dash"
    assert list(fig.data[1].y) == [0, 0.5, 1, 1]
    assert fig.data[1].line.color == backbones.get_spec("resnet50").color
    fig.to_json()


def test_confusion_figure() -> None:
    cm = np.array([[3, 1], [0, 0]])
    fig = charts.confusion_figure(cm, ["hem", "all"], title="val")
    (heat,) = fig.data
    assert np.array_equal(np.asarray(heat.z), cm)
    assert list(heat.x) == ["hem", "all"] and list(heat.y) == ["hem", "all"]
    assert heat.text[0][0] == "3<br>(75.0%)" and heat.text[0][1] == "1<br>(25.0%)"
    assert heat.text[1][0] == "0"  # no true `all` here: no row share to show
    assert fig.layout.xaxis.title.text == "predicted" and fig.layout.yaxis.title.text == "true"
    assert fig.layout.yaxis.autorange == "reversed"
    fig.to_json()
    with pytest.raises(ValueError, match="classes"):
        charts.confusion_figure(cm, ["hem", "all", "x"])


def test_probability_bars() -> None:
    fig = charts.probability_bars({"hem": 0.2, "all": 0.8}, title="cell.bmp")
    (bar,) = fig.data
    assert list(bar.x) == pytest.approx([20.0, 80.0]) and list(bar.y) == ["hem", "all"]
    assert bar.orientation == "h" and list(fig.layout.xaxis.range) == [0, 100]
    assert bar.marker.color[1] == charts.class_color("all") and bar.marker.color[0] == charts.NEUTRAL_COLOR
    assert list(bar.text) == ["20.0 %", "80.0 %"]
    fig.to_json()


def test_reliability_figure() -> None:
    y = np.array([0, 1, 1, 0])
    prob = np.array([[0.9, 0.1], [0.25, 0.75], [0.7, 0.3], [0.45, 0.55]])
    fig = charts.reliability_figure(metrics.reliability_bins(y, prob, n_bins=5))
    t = traces(fig)
    assert set(t) == {"perfect calibration", "model"}
    assert list(t["model"].x) == pytest.approx([0.55, 0.725, 0.9])
    assert list(t["model"].y) == pytest.approx([0.0, 0.5, 1.0])
    assert list(t["model"].customdata) == [1, 2, 1]
    fig.to_json()


def test_per_subject_figure() -> None:
    subjects = ["h3", "h3", "h3", "11", "11", "7", "7"]
    df = metrics.per_subject([0, 0, 0, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0, 0], subjects)
    fig = charts.per_subject_figure(df, classes=("hem", "all"))
    t = traces(fig)
    assert set(t) == {"hem", "all"}
    assert list(t["all"].x) == ["7", "11"] and list(t["all"].y) == pytest.approx([0.0, 1.0])
    assert list(t["hem"].x) == ["h3"]
    assert t["all"].marker.color == charts.class_color("all")
    assert fig.layout.xaxis.type == "category" and list(fig.layout.xaxis.categoryarray) == ["7", "h3", "11"]
    # Without class names the integer labels name the traces.
    assert {tr.name for tr in charts.per_subject_figure(df).data} == {"0", "1"}
    fig.to_json()


def test_no_background_or_streamlit() -> None:
    fig = charts.training_curves(run_events())
    assert fig.layout.paper_bgcolor is None and fig.layout.plot_bgcolor is None
    tree = ast.parse(Path(charts.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names} | {n.module.split(".")[0] for n in ast.walk(tree)
                                     if isinstance(n, ast.ImportFrom) and n.module}
    assert "streamlit" not in imported


def test_lr_find_figure_marks_the_suggestion_on_a_log_axis() -> None:
    result = {"rates": [1e-5, 1e-4, 1e-3, 1e-2], "losses": [0.7, 0.6, 0.4, 0.9], "smoothed": [0.7, 0.65, 0.5, 0.6],
              "suggestion": 1e-4}
    fig = charts.lr_find_figure(result)
    assert fig.layout.xaxis.type == "log"
    names = [t.name for t in fig.data]
    assert names == ["loss (each step)", "loss (smoothed)", "a tenth of the minimum 0.0001"]
    assert list(fig.data[2].x) == [1e-4] and fig.data[2].y[0] == pytest.approx(0.65)
    mine = charts.lr_find_figure(result, current=1e-3)  # the rate on screen, where the sweep measured it
    assert mine.data[-1].name == "your rate 0.001" and mine.data[-1].y[0] == pytest.approx(0.5)
    assert charts.lr_find_figure({}).layout.annotations  # nothing yet: says so


def test_every_figure_saves_as_png_or_svg_named_after_it():
    png = charts.figure_config("ROC · GoogLeNet, seed 1")
    assert png["toImageButtonOptions"] == {"format": "png", "filename": "leukviz-roc-googlenet-seed-1",
                                           "scale": charts.PNG_SCALE}
    svg = charts.figure_config("ROC", "svg")["toImageButtonOptions"]
    assert svg["format"] == "svg" and svg["scale"] == 1 and svg["filename"] == "leukviz-roc"
    assert charts.image_filename("··") == "leukviz-figure"
    with pytest.raises(ValueError, match="png, svg"):
        charts.figure_config("ROC", "gif")


def test_the_interval_chart_keeps_its_legend_above_and_names_its_models_in_words():
    """The legend sits above the plot, the model names (wrapped at ' · ' and ', ') below it: they never meet."""
    def score(model: str, which: str = "val") -> dict:
        return {"model": model, "set": which, "seeds": [0, 1],
                "spread": {"weighted_f1": {"mean": 0.8, "values": [0.79, 0.81]}},
                "interval": {"scores": {"weighted_f1": {"low": 0.7, "high": 0.9}}}}

    fig = charts.interval_figure([score("GoogLeNet · 32 px, 1 epoch"), score("ResNet50"), score("VGG16"),
                                  score("GoogLeNet · 32 px, 2 epochs"), score("ResNet50", "test")])
    assert fig.layout.legend.y >= 1 and fig.layout.legend.yanchor == "bottom"
    assert fig.data[0].x[0] == "GoogLeNet ·<br>32 px,<br>1 epoch"
    assert fig.layout.xaxis.automargin and fig.layout.xaxis.tickangle == 0
