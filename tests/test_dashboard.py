"""Tests for leukviz.dashboard: what the pages show, computed from hand-made run folders and tiny models."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from leukviz import backbones, config, dashboard, data, inference, metrics, runs
from leukviz.storage import append_jsonl, atomic_write_json

# ---------------------------------------------------------------------------------------------- helpers

def make_run(root: Path, backbone: str = "googlenet", fingerprint: str = "fp1",
             state: str | None = "finished", split: str = "subject", data_spec: str = "demo",
             created: float | None = None, seed: int = 0, with_predictions: bool = True,
             **cfg_overrides) -> runs.Run:
    """A run folder written by hand, as the engine would leave it (no training)."""
    cfg = config.resolve(backbone, "quick", "none", data_spec, split=split, seed=seed, **cfg_overrides)
    run = runs.Run(root / cfg.identity(fingerprint))
    run.dir.mkdir(parents=True)
    atomic_write_json(run.dir / "config.json", {"run_id": run.run_id, "config": cfg.to_dict(),
                                                "dataset_fingerprint": fingerprint,
                                                "created": created if created is not None else time.time()})
    if state:
        atomic_write_json(run.dir / "status.json", {"state": state, "epoch": 2, "epochs": 3,
                                                    "updated": time.time(),
                                                    "error": "boom" if state == "failed" else None})
    if state is None:  # never started: no files beyond config.json
        return run
    append_jsonl(run.dir / "metrics.jsonl", {"type": "start", "epoch": 0, "epochs": 3, "steps_per_epoch": 4,
                                             "time": 100.0})
    for e in (1, 2):
        append_jsonl(run.dir / "metrics.jsonl", {
            "type": "epoch", "epoch": e, "epochs": 3, "train_loss": 0.5, "train_acc": 0.7, "val_loss": 0.4,
            "val_acc": 0.75, "val_f1": 0.7, "seconds": 10.0 * e, "time": 100.0 + 10 * e})
    if with_predictions:
        y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
        p_all = np.array([0.1, 0.6, 0.2, 0.9, 0.8, 0.4, 0.7, 0.95])
        pd.DataFrame({"path": [f"/x/{i}.png" for i in range(8)], "subject": ["H1"] * 3 + ["7"] * 5,
                      "label": y, "pred": (p_all > 0.5).astype(int), "prob_hem": 1 - p_all, "prob_all": p_all}
                     ).to_csv(run.dir / "val_predictions.csv", index=False)
        atomic_write_json(run.dir / "model.json", {
            "backbone": backbone, "classes": ["hem", "all"], "params": 5_600_000, "weights_init": "none",
            "split": {"method": split, "description": "by subject: 1 of 3 subjects held out"},
            "metrics": {"val_acc": 0.75, "val_f1": 0.74, "best_epoch": 2}})
        (run.dir / "model.safetensors").write_bytes(b"\0" * 2_000_000)
    return run


class FakeProc:
    def __init__(self, returncode: int | None):
        self.returncode = returncode

    def poll(self) -> int | None:
        return self.returncode


_NET: list[torch.nn.Module] = []


def tiny_model(tmp_path: Path, size: int = 32, crop: bool = True, name: str = "m") -> inference.LoadedModel:
    """An untrained GoogLeNet (built once: its initialisation is slow) posing as a finished run's model."""
    if not _NET:
        torch.manual_seed(0)
        _NET.append(backbones.build_model("googlenet", 2, "none").eval())
    model = _NET[0]
    meta = {"backbone": "googlenet", "classes": ["hem", "all"], "image_size": size, "crop": crop}
    (tmp_path / name).mkdir(exist_ok=True)
    return inference.LoadedModel(model, meta, torch.device("cpu"), tmp_path / name)


def png_bytes(size: int = 48) -> bytes:
    a = np.zeros((size, size, 3), np.uint8)
    a[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (150, 90, 200)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- text

def test_plain_escapes_everything_markdown_could_interpret():
    nasty = "**b** _i_ `c` [l](http://x) <b>h</b> $x$ :red[r] :material/home: # h 1. x | t ~s~ &amp;"
    out = dashboard.plain(nasty)
    for ch in "*_`[]()<>$:#.|~&":
        assert ch not in out.replace("\\" + ch, "")  # every occurrence is escaped
    assert out.replace("\\", "") == nasty
    assert dashboard.plain("two\nlines") == "two lines"


def test_labels_and_durations():
    assert dashboard.dataset_label("demo") == "built-in demo"
    assert dashboard.dataset_label("/data/sets/C-NMC_Leukemia") == "sets/C-NMC_Leukemia"
    assert dashboard.format_duration(None) == "–"
    assert dashboard.format_duration(42.4) == "42 s"
    assert dashboard.format_duration(125) == "2 min 05 s"
    assert dashboard.format_duration(3 * 3600 + 120) == "3 h 02 min"


# ---------------------------------------------------------------------------------------------- progress

def test_progress_fraction_and_eta_from_events():
    events = [{"type": "start", "epoch": 0, "epochs": 2, "steps_per_epoch": 10, "time": 0.0}]
    assert dashboard.progress(events).eta is None
    events.append({"type": "batch", "epoch": 1, "step": 5, "steps": 10, "loss": 0.6, "time": 10.0})
    p = dashboard.progress(events)
    assert p.fraction == pytest.approx(5 / 20)
    assert p.eta == pytest.approx(30.0)  # 5 steps in 10 s, 15 to go
    assert (p.epoch, p.step) == (1, 5)
    events.append({"type": "epoch", "epoch": 1, "epochs": 2, "time": 22.0})
    p = dashboard.progress(events)
    assert p.fraction == pytest.approx(0.5) and p.eta == pytest.approx(22.0)
    assert "Epoch 1 of 2" in p.text and "left" in p.text


def test_progress_measures_the_rate_since_a_resume():
    events = [{"type": "start", "epoch": 0, "epochs": 2, "steps_per_epoch": 10, "time": 0.0},
              {"type": "batch", "epoch": 1, "step": 10, "steps": 10, "time": 1000.0},
              {"type": "epoch", "epoch": 1, "epochs": 2, "time": 1000.0},
              {"type": "resume", "epoch": 1, "step": 0, "epochs": 2, "steps_per_epoch": 10, "time": 5000.0},
              {"type": "batch", "epoch": 2, "step": 2, "steps": 10, "time": 5004.0}]
    p = dashboard.progress(events)
    assert p.fraction == pytest.approx(12 / 20)
    assert p.eta == pytest.approx(16.0)  # 2 steps in 4 s since the resume; the long pause does not count


def test_progress_before_any_event():
    p = dashboard.progress([])
    assert p.fraction == 0 and p.eta is None and "Preparing" in p.text


# ---------------------------------------------------------------------------------------------- run states

def test_read_status_starting_then_dead_before_writing(tmp_path, monkeypatch):
    run = make_run(tmp_path, state=None, with_predictions=False)
    assert run.state == "new"
    monkeypatch.setitem(runs._LAUNCHES, run.dir, runs._Launch(time.time(), FakeProc(None)))
    assert run.state == "starting"
    assert runs.start(run) is False  # never launched twice
    (run.dir / "train.log").write_text("Traceback...\nImportError: no module named x\n")
    monkeypatch.setitem(runs._LAUNCHES, run.dir, runs._Launch(time.time(), FakeProc(1)))
    st = run.status
    assert st["state"] == "failed" and "ImportError" in st["error"]
    # once the process writes its own status, that is the truth
    monkeypatch.setitem(runs._LAUNCHES, run.dir, runs._Launch(time.time() - 60, FakeProc(0)))
    runs.write_status(run, "stopped", error="stopped at epoch 1")
    assert run.state == "stopped"


def test_start_attaches_instead_of_launching_a_locked_run(tmp_path, monkeypatch):
    run = make_run(tmp_path, state="running", with_predictions=False)
    launched = []
    monkeypatch.setattr(runs, "launch", lambda *a, **k: launched.append(a))
    lock = run.lock()
    lock.acquire()
    try:
        assert run.state == "running"
        assert runs.start(run) is False
    finally:
        lock.release()
    assert launched == []
    assert run.state == "interrupted"  # nobody holds the lock any more


def test_retrain_archives_then_launches(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    monkeypatch.setattr(runs, "launch", lambda run, resume=False, nproc=1: FakeProc(None))
    assert runs.retrain(run) is True
    assert not (run.dir / "model.safetensors").exists()
    assert (run.dir / "config.json").exists()
    assert any((tmp_path / ".archive").iterdir())
    assert run.state == "starting"


def test_backbone_cards(tmp_path):
    make_run(tmp_path, "googlenet", created=1)
    make_run(tmp_path, "resnet50", state="failed", created=2, with_predictions=False)
    make_run(tmp_path, "vgg16", data_spec="/elsewhere", created=3)  # another dataset: not on the card
    cards = {c.backbone: c for c in dashboard.backbone_cards("demo", tmp_path)}
    assert list(cards) == list(backbones.BACKBONES)
    assert cards["googlenet"].state == "finished" and cards["googlenet"].val_acc == 0.75
    assert cards["googlenet"].val_f1 == 0.74 and cards["googlenet"].text == "Finished"
    assert cards["resnet50"].state == "failed" and cards["resnet50"].error == "boom"
    assert cards["vgg16"].state == "none" and cards["vgg16"].text == "No run yet"


def test_find_run_creates_nothing(tmp_path):
    cfg = config.resolve("googlenet", "quick", "none", "demo")
    assert dashboard.find_run(cfg, "fp", tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    made = runs.run_for(cfg, tmp_path, fingerprint="fp")
    assert dashboard.find_run(cfg, "fp", tmp_path).dir == made.dir


def test_default_models_prefer_the_active_dataset(tmp_path):
    a = make_run(tmp_path, "googlenet", data_spec="/a", created=3)
    b = make_run(tmp_path, "googlenet", data_spec="/b", created=2, lr=3e-3)
    c = make_run(tmp_path, "resnet50", data_spec="/b", created=1)
    finished = dashboard.finished_runs(tmp_path)
    assert [r.run_id for r in finished] == [a.run_id, b.run_id, c.run_id]
    assert [r.run_id for r in dashboard.default_models(finished, "/b")] == [c.run_id, b.run_id]
    assert [r.run_id for r in dashboard.default_models(finished, "/none")] == [c.run_id, a.run_id]


# ---------------------------------------------------------------------------------------------- compare

def test_groups_separate_datasets_and_splits(tmp_path):
    make_run(tmp_path, "googlenet", "fpA")
    make_run(tmp_path, "resnet50", "fpA")
    make_run(tmp_path, "vgg16", "fpB")
    make_run(tmp_path, "googlenet", "fpA", split="image")
    make_run(tmp_path, "resnet50", "fpA", seed=1)
    groups = dashboard.comparable_groups(dashboard.finished_runs(tmp_path))
    sizes = sorted(len(g.runs) for g in groups.values())
    assert sizes == [1, 1, 1, 2]
    biggest = next(iter(groups.values()))
    assert {r.config.backbone for r in biggest.runs} == {"googlenet", "resnet50"}
    assert "by subject" in biggest.label and "2 runs" in biggest.label
    assert any("LEAKY" in g.label for g in groups.values())


def test_compare_row_from_the_run_files(tmp_path):
    run = make_run(tmp_path)
    ev = dashboard.evaluate_run(run)
    df = pd.read_csv(run.dir / "val_predictions.csv")
    expected = metrics.summary(df["label"], df[["prob_hem", "prob_all"]].to_numpy(), ["hem", "all"])
    row = dashboard.compare_row(ev, seconds_per_image=0.0123)
    assert row["val_accuracy"] == pytest.approx(expected["accuracy"]) == pytest.approx(6 / 8)
    assert row["weighted_f1"] == pytest.approx(expected["weighted_f1"])
    assert row["sensitivity"] == pytest.approx(4 / 5) and row["specificity"] == pytest.approx(2 / 3)
    assert row["roc_auc"] == pytest.approx(expected["roc_auc"])
    assert row["train_time"] == "30 s"  # 10 s + 20 s of epochs
    assert row["ms_per_image"] == pytest.approx(12.3)
    assert row["params_m"] == pytest.approx(5.6) and row["checkpoint_mb"] == pytest.approx(2.0)
    assert row["weights"] == "none" and row["split"].startswith("by subject")
    assert ev.summary["subject_vote"]["n_subjects"] == 2  # subjects "H1" and "7" read as text
    table = dashboard.compare_table([row])
    assert list(table.columns) == list(dashboard.COMPARE_COLUMNS)
    curves = dashboard.roc_curves([ev])
    fpr, tpr, auc = curves[dashboard.run_name(run)]
    assert fpr[0] == 0 and tpr[-1] == 1 and auc == pytest.approx(expected["roc_auc"])
    assert list(dashboard.histories([run])) == [dashboard.run_name(run)]


# ---------------------------------------------------------------------------------------------- prediction

def test_predict_image_one_result_per_model_sharing_one_decode(tmp_path):
    models = [tiny_model(tmp_path, 32, name=n) for n in "ab"] + [tiny_model(tmp_path, 48, name="c")]
    res = dashboard.predict_image(models, "cell.png", png_bytes())
    assert res.error is None
    assert [r.run_id for r in res.results] == ["a", "b", "c"]
    assert [r.image.shape for r in res.results] == [(32, 32, 3), (32, 32, 3), (48, 48, 3)]
    for r in res.results:
        assert r.predicted in ("hem", "all")
        assert r.confidence == pytest.approx(max(r.probs.values()))
        assert sum(r.probs.values()) == pytest.approx(1.0, abs=1e-5)
    # the same bytes as an uploaded file object or a path give the same answer
    path = tmp_path / "cell.png"
    path.write_bytes(png_bytes())
    again = dashboard.predict_image(models[:1], "cell.png", path)
    assert again.results[0].probs == pytest.approx(res.results[0].probs)


@pytest.mark.parametrize("blob", [b"", b"hello, not an image", png_bytes()[:60]],
                         ids=["empty", "text", "truncated"])
def test_predict_image_bad_files_give_an_error_not_an_exception(tmp_path, blob):
    res = dashboard.predict_image([tiny_model(tmp_path)], "bad <b>name</b>.png", blob)
    assert res.results == []
    assert res.error and "\n" not in res.error
    assert not res.error.startswith("bad")  # the reason alone: the page shows the name itself
    assert res.name == "bad <b>name</b>.png"
    if not blob:
        assert "empty" in res.error


def test_uploads_are_decoded_and_predicted_once_for_the_table_and_the_cards(tmp_path, monkeypatch):
    import zipfile

    models = [tiny_model(tmp_path, 32, name=n) for n in "ab"]
    calls = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cells/one.png", png_bytes())
        zf.writestr("cells/notes.txt", b"not an image")
        zf.writestr("__MACOSX/cells/._one.png", b"junk")
    files = [("x.png", png_bytes()), ("bad.png", b"not an image"), ("cells.zip", archive.getvalue()),
             ("broken.zip", b"not a zip")]
    preds = dashboard.predict_uploads(models, files, tmp_path / "up")
    assert [p.name for p in preds] == ["x.png", "bad.png", "cells.zip/cells/one.png"]
    assert len(calls) == 3  # one decode per image: both models share one decoding
    assert preds[0].results[0].image.shape == (32, 32, 3) and preds[2].results[0].image is None
    assert preds[1].error and not preds[1].results
    table = dashboard.prediction_table(models, preds)
    assert len(table) == 3 * len(models) and list(table["run_id"]) == ["a"] * 3 + ["b"] * 3
    assert (table["error"] != "").sum() == len(models)
    assert table.loc[0, "prob_all"] == pytest.approx(preds[0].results[0].probs["all"])


def test_time_per_image_is_positive(tmp_path):
    assert 0 < dashboard.time_per_image(tiny_model(tmp_path), repeats=2, warmup=1) < 30


# ---------------------------------------------------------------------------------------------- data page

def test_sample_and_demo_cells(tiny_data):
    ds = data.open_dataset(str(tiny_data))
    samples = dashboard.sample_cells(ds, per_class=4)
    assert list(samples) == list(ds.classes)
    for cls, paths in samples.items():
        assert len(paths) == 4
        assert all(f"_{cls}." in Path(p).name for p in paths)  # C-NMC names end in the class
    cells = dashboard.demo_cells(ds, n=3, seed=0)
    assert len(cells) == 3
    prelim = set(ds.index.loc[ds.index["set"] == "prelim", "path"])
    assert all(p in prelim for p, _ in cells)
    assert {c for _, c in cells} == set(ds.classes)  # both classes get a turn
    for p, c in cells:
        assert ds.classes[int(ds.index.loc[ds.index["path"] == p, "label"].iloc[0])] == c
    assert dashboard.demo_cells(ds, n=3, seed=1) != cells


def test_augment_preview_uses_the_training_transforms():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    dihedral = [np.rot90(v, k) for v in (img, img[:, ::-1]) for k in range(4)]
    views = dashboard.augment_preview(img, "flips", n=4)
    assert len(views) == 4
    for caption, v in views:
        assert v.shape == img.shape and v.dtype == np.uint8
        # a real flip or turn, never the original
        assert any(np.array_equal(v, d) for d in dihedral[1:]), caption
    full = dashboard.augment_preview(img, "full", n=3)
    assert all("jitter" in c for c, _ in full)
    assert not any(np.array_equal(v, d) for _, v in full for d in dihedral)
    assert dashboard.augment_preview(img, "none")[0][1] is img


def test_save_upload_names_by_content(tmp_path):
    a = dashboard.save_upload(b"zip-bytes", tmp_path)
    assert a.read_bytes() == b"zip-bytes" and a.suffix == ".zip"
    assert dashboard.save_upload(b"zip-bytes", tmp_path) == a
    assert dashboard.save_upload(b"other", tmp_path) != a
    assert not list(tmp_path.glob("*.part"))


def test_run_name_and_description():
    cfg = config.resolve("vgg16", "paper", "none", "demo")
    text = dashboard.describe_config(cfg)
    assert text.startswith("VGG16, paper preset") and "128 px" in text and "split by subject" in text
    folds = config.resolve("resnet50", split="folds", weights="none")
    assert dashboard.split_text(folds).startswith("official folds")
    assert json.dumps(cfg.to_dict())  # what the Train page's settings expander shows
