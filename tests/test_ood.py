"""The out-of-distribution check (leukviz.ood): the reference kept in the sidecar at training, the rules on
demo and real C-NMC cells, the prediction records and `predict` on the command line; and the CLI's
training progress (tqdm on a terminal, one line per epoch in a log)."""

from __future__ import annotations

import functools
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukviz import cli
from leukviz.core import filenames, paths
from leukviz.core.events import BATCH, EPOCH, START
from leukviz.datasets import data, ood, synthetic
from leukviz.models import config
from leukviz.runstore import runs, trainer
from leukviz.serving import inference


def small_demo(generate, root: Path, seed: int = 0, **_) -> Path:
    """The demo generator at a tenth of the size (as tests/test_app.py): 64 px cells, 6 subjects."""
    return generate(root, seed=seed, n_subjects=6, image_size=64, workers=1)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> runs.Run:
    """A finished one-epoch, 32 px, head-only ResNet50 run on a small demo, in this module's own home."""
    home = tmp_path_factory.mktemp("ood-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEUKVIZ_HOME", str(home))
        mp.setattr(synthetic, "generate_demo", functools.partial(small_demo, synthetic.generate_demo))
        cfg = config.resolve("resnet50", "quick", "none", "demo", epochs=1, image_size=32, batch_size=64,
                             finetune="head")
        run = runs.run_for(cfg)
        trainer.train(run, log=lambda s: None)
        yield run


def demo_cells(run: runs.Run) -> list[Path]:
    """The demo's held-out (prelim) cells: other subjects than the run trained on."""
    ds = data.open_dataset("demo", paths.cache_root())  # the fixture's home is set while it lives
    return [Path(p) for p in ds.index.loc[ds.index["set"] == "prelim", "path"]]


def cnmc_cell(cnmc_mini: Path) -> Path:
    return sorted((cnmc_mini / "validation_data" / "C-NMC_test_prelim_phase_data").glob("*.bmp"))[0]


def test_the_sidecar_keeps_the_training_images_reference(demo_run):
    meta = json.loads((demo_run.dir / filenames.SIDECAR).read_text())
    ref = meta["reference"]
    assert ref["version"] == ood.VERSION and ref["sizes"] == ["64x64"]
    assert ref["width"] == [64, 64] and ref["height"] == [64, 64]
    assert 20 < ref["n"] <= ood.SAMPLE
    lo, hi = ref["black"]
    assert 0.5 < lo < hi < 1.0  # a cell on black
    colour = ref["colour"]
    assert len(colour["mean"]) == 6 and np.asarray(colour["cov"]).shape == (6, 6)
    assert colour["limit"] >= ood.COLOUR_LIMIT
    assert len(json.dumps(ref)) < 2000  # small: it travels in every checkpoint's sidecar


def test_held_out_demo_cells_pass_and_a_real_cnmc_cell_is_flagged(demo_run, cnmc_mini):
    lm = inference.load_model(demo_run.dir)
    cells = demo_cells(demo_run)
    assert len(cells) > 20
    flagged = [(c.name, ood.check(c, lm.reference)) for c in cells]
    assert [f for f in flagged if f[1]] == []
    reasons = ood.check(cnmc_cell(cnmc_mini), lm.reference)
    assert any(r.startswith("size 450x450 px, the training images were 64x64 px") for r in reasons), reasons
    assert any(r.startswith("cell colour unlike the training cells'") for r in reasons), reasons
    assert not any(";" in r for r in reasons)  # a table joins them with "; "


def test_a_real_cnmc_run_would_pass_other_real_cells(cnmc_mini):
    """The rules are not 'anything unlike the demo': a reference of real cells passes the other real cells."""
    paths = sorted((cnmc_mini / "training_data").rglob("*.bmp"))
    ref = ood.reference_stats(paths)
    assert ref["sizes"] == ["450x450"] and ref["colour"] is not None
    held_out = sorted((cnmc_mini / "validation_data").rglob("*.bmp")) + sorted((cnmc_mini / "testing_data").rglob("*.bmp"))
    assert held_out and all(ood.check(p, ref) == [] for p in held_out)


def test_background_and_no_cell_are_reasons_of_their_own(demo_run):
    ref = inference.load_model(demo_run.dir).reference
    cell = np.asarray(Image.open(demo_cells(demo_run)[0]).convert("RGB"))
    on_white = np.where(cell.max(axis=2, keepdims=True) > 10, cell, 255).astype(np.uint8)
    reasons = ood.check(on_white, ref)
    assert any(r.startswith("background: ") for r in reasons) and any("edge is not black" in r for r in reasons)
    assert ood.check(np.zeros((64, 64, 3), np.uint8), ref) == ["no cell found: almost every pixel is near-black"]
    assert ood.check(cell, ref) == []  # the same cell as it is: like the training images


def test_records_carry_the_check_and_old_runs_say_they_were_not_compared(demo_run, cnmc_mini, tmp_path):
    lm = inference.load_model(demo_run.dir)
    real, demo = str(cnmc_cell(cnmc_mini)), str(demo_cells(demo_run)[0])
    rows = {Path(r["file"]).name: r for r in inference.predict_files(lm, [real, demo])}
    assert rows[Path(real).name]["ood"] is True and rows[Path(real).name]["predicted"] in lm.classes
    assert rows[Path(real).name]["ood_note"].startswith("unlike the training data: size 450x450 px")
    assert rows[Path(demo).name]["ood"] is False and rows[Path(demo).name]["ood_reasons"] == []

    old = tmp_path / demo_run.run_id  # a run trained before the sidecar held a reference
    shutil.copytree(demo_run.dir, old, ignore=shutil.ignore_patterns("*.lock", "last.pt"))
    meta = json.loads((old / filenames.SIDECAR).read_text())
    del meta["reference"]
    (old / filenames.SIDECAR).write_text(json.dumps(meta))
    rec = inference.predict_files(inference.load_model(old), [real])[0]
    assert rec["ood"] is None and rec["ood_reasons"] == [] and rec["ood_note"] == ood.NO_REFERENCE
    assert rec["ood_note"].startswith("no reference statistics (trained before")
    damaged = ood.assess(real, {"version": 1, "width": [64]})  # a hand-edited sidecar: no crash, no warning
    assert damaged["ood"] is None and "damaged" in damaged["ood_note"]
    table = inference.predict_table([lm], [real, demo])
    assert list(table["ood"]) == [True, False] and "450x450" in table["ood_reasons"].iloc[0]


def test_cli_predict_json_and_text_carry_the_warning(demo_run, cnmc_mini, capsys):
    real, demo = str(cnmc_cell(cnmc_mini)), str(demo_cells(demo_run)[0])
    where = ["--run", demo_run.run_id, "--runs-dir", str(demo_run.dir.parent)]
    assert cli.main(["predict", *where, real, demo, "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    by_name = {Path(r["file"]).name: r for r in res["predictions"]}
    flagged = by_name[Path(real).name]
    assert flagged["ood"] is True and isinstance(flagged["ood_reasons"], list) and len(flagged["ood_reasons"]) == 2
    assert flagged["ood_reasons"][0].startswith("size 450x450 px")
    assert by_name[Path(demo).name]["ood"] is False and by_name[Path(demo).name]["ood_reasons"] == []
    assert cli.main(["predict", *where, real, demo]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    line = next(x for x in lines if Path(real).name in x)
    assert "(unlike the training data: size 450x450 px" in line and flagged["predicted"] in line
    assert "unlike" not in next(x for x in lines if Path(demo).name in x)


# ---------------------------------------------------------------------------------------------- progress

START_EV = {"type": START, "n_train": 100, "n_val": 20, "device": "cpu", "precision": "fp32",
            "split": {"method": "subject"}}


def epoch_ev(epoch: int) -> dict:
    return {"type": EPOCH, "epoch": epoch, "epochs": 2, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.4,
            "val_acc": 0.85, "val_f1": 0.84, "seconds": 10.0, "images_per_s": 10.0}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(progress: cli.Progress) -> None:
    progress(START_EV)
    for epoch in (1, 2):
        for step in (1, 2, 3, 4):
            progress({"type": BATCH, "epoch": epoch, "step": step, "steps": 4, "loss": 0.5, "acc": 0.8})
        progress(epoch_ev(epoch))


def test_progress_in_a_log_is_one_line_per_epoch(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    feed(cli.Progress())
    lines = err.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("start: 100 train / 20 val images")
    assert lines[1].startswith("epoch 1/2: train loss 0.5000") and lines[1].endswith("10 images/s, about 10 s left")
    assert lines[2].endswith("| 10.0s, 10 images/s") and "\r" not in err.getvalue()


def test_progress_on_a_terminal_draws_a_tqdm_bar_per_epoch(monkeypatch):
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    feed(cli.Progress())
    text = err.getvalue()
    draws = [x for x in text.split("\r") if x.startswith("epoch ") and "|" in x and "img/s" in x]
    # tqdm's bar per epoch: images done of the epoch's 100, [elapsed<ETA, images/s], loss and accuracy
    assert {x.split(":")[0] for x in draws} == {"epoch 1", "epoch 2"}
    assert all("/100 [" in x and "<" in x for x in draws), draws
    for epoch in (1, 2):
        assert any(x.startswith(f"epoch {epoch}:") and "loss 0.5000 acc 0.800" in x for x in draws), draws
    summaries = [x for x in text.replace("\r", "\n").splitlines() if x.startswith("epoch 1/2: train loss")]
    assert len(summaries) == 1


def test_a_tiny_white_image_gets_reasons_that_agree_with_each_other():
    """A white 2x2 image: nothing near-black, so never 'almost every pixel is near-black' beside '0 %'."""
    ref = {"width": [100, 500], "height": [100, 500], "black": [0.5, 0.8], "border": 10, "colour": None}
    reasons = ood.check(np.full((2, 2, 3), 255, np.uint8), ref)
    assert any(r.startswith("background: 0% of the image is near-black") for r in reasons)
    assert "too few pixels to measure a cell's colour (2x2 px, 100% of them not black)" in reasons
    assert not any("almost every pixel is near-black" in r for r in reasons)
