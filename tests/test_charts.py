"""Tests for leukviz.charts: every figure builds from small synthetic inputs with the right traces."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from leukviz import backbones, charts, metrics


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


def test_training_curves_traces_and_values() -> None:
    fig = charts.training_curves(run_events(), title="resnet50")
    t = traces(fig)
    assert set(t) == {"train loss (running)", "train acc (running)", "train loss", "val loss",
                      "train acc", "val acc"}
    assert list(t["val loss"].y) == [0.55]
    assert list(t["train loss"].y) == [0.62]
    assert list(t["val acc"].y) == [0.8] and list(t["val loss"].x) == [1]
    assert list(t["train loss (running)"].x) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    assert list(t["train loss (running)"].y) == pytest.approx([0.75, 0.7, 0.65, 0.6, 0.5, 0.5])
    # Loss on the left subplot, accuracy on the right one shown in percent.
    assert t["val loss"].xaxis == "x" and t["val acc"].xaxis == "x2"
    assert t["train loss (running)"].line.width < t["train loss"].line.width
    assert t["train loss"].line.color != t["val loss"].line.color
    assert t["train acc"].line.color == t["train loss"].line.color
    assert fig.layout.yaxis2.tickformat == ".0%" and tuple(fig.layout.yaxis2.range) == (0, 1.02)
    # The x range covers the planned 3 epochs from the start, so it does not jump while training.
    assert fig.layout.xaxis.range[1] >= 3
    assert fig.layout.title.text == "resnet50"
    assert charts.WAITING_TEXT not in annotation_texts(fig)
    json.loads(fig.to_json())


def test_training_curves_only_batches() -> None:
    fig = charts.training_curves([batch(1, 1), batch(1, 2)])
    t = traces(fig)
    assert set(t) == {"train loss (running)", "train acc (running)"}
    assert list(t["train loss (running)"].x) == pytest.approx([0.25, 0.5])
    assert charts.WAITING_TEXT not in annotation_texts(fig)
    fig.to_json()


@pytest.mark.parametrize("events", [[], [{"type": "start", "epoch": 0, "epochs": 2, "steps_per_epoch": 3}]])
def test_training_curves_waiting(events: list[dict]) -> None:
    fig = charts.training_curves(events)
    assert len(fig.data) == 0
    assert charts.WAITING_TEXT in annotation_texts(fig)
    fig.to_json()


def test_training_curves_resumed_run_and_missing_validation() -> None:
    events = [epoch(1, val_loss=0.9), epoch(2, val_loss=None), epoch(1, val_loss=0.4)]
    t = traces(charts.training_curves(events))
    # The repeated epoch 1 (after a resume) replaces the first one; a missing value is a gap.
    assert list(t["val loss"].x) == [1, 2]
    assert list(t["val loss"].y) == [0.4, None]


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
    assert names == ["loss (each step)", "loss (smoothed)", "suggested 0.0001"]
    assert list(fig.data[2].x) == [1e-4] and fig.data[2].y[0] == pytest.approx(0.65)
    assert charts.lr_find_figure({}).layout.annotations  # nothing yet: says so
