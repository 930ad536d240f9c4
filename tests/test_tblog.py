"""TensorBoard: event files beside a run while it trains (with the tensorboard extra), the same numbers as its
metrics.jsonl; `leukviz tensorboard` writes them afterwards; without tensorboard nothing changes."""

from __future__ import annotations

import json

import pytest

from leukviz import cli
from leukviz.models.config import resolve
from leukviz.runstore import runs, trainer
from leukviz.training import tblog


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


@pytest.fixture(scope="module")
def trained(tiny_data, trained_run):
    return trained_run(resolve("googlenet", "quick", "none", str(tiny_data), epochs=2, image_size=32, batch_size=16))


def test_a_run_trained_with_tensorboard_installed_has_its_curves_beside_it(trained):
    pytest.importorskip("tensorboard")
    got = _scalars(trained.dir / "tensorboard")
    epochs = trained.epochs()
    assert len(epochs) == 2
    for field, tag in (("val_f1", "weighted_f1/validation"), ("train_loss", "loss/train"), ("val_acc", "accuracy/validation")):
        assert got[tag] == [(e["epoch"], pytest.approx(e[field], rel=1e-6)) for e in epochs], tag
    assert got["final/val_f1"][0][1] == pytest.approx(trained.final_metrics()["val_f1"], rel=1e-6)


def test_the_command_writes_the_same_numbers_afterwards(trained, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    rc = cli.main(["tensorboard", trained.run_id[:6], "--runs-dir", str(trained.dir.parent), "--logdir",
                   str(tmp_path / "tb"), "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and out["written"][0]["run_id"] == trained.run_id and out["written"][0]["epochs"] == 2
    assert _scalars(tmp_path / "tb" / trained.run_id) == _scalars(trained.dir / "tensorboard")
    # again: the folder is written afresh, not appended to (each step once)
    assert cli.main(["tensorboard", trained.run_id, "--runs-dir", str(trained.dir.parent), "--logdir",
                     str(tmp_path / "tb")]) == 0
    assert [s for s, _ in _scalars(tmp_path / "tb" / trained.run_id)["loss/train"]] == [1, 2]


def test_without_tensorboard_training_writes_nothing_more_and_the_command_says_what_to_install(
        tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tblog, "available", lambda: False)
    cfg = resolve("googlenet", "quick", "none", str(tiny_data), epochs=1, image_size=32, batch_size=16, seed=7)
    run = runs.run_for(cfg, tmp_path / "runs")
    runs.ensure(run, lambda r, resume: trainer.train(r, resume=resume, log=lambda s: None))
    assert run.state == "finished" and not (run.dir / "tensorboard").exists()
    assert cli.main(["tensorboard", run.run_id, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'leukviz[tensorboard]'" in err


def test_epoch_scalars_leave_out_what_is_not_a_number():
    ev = {"epoch": 1, "train_loss": 0.5, "val_loss": float("nan"), "val_acc": None, "lr": 1e-3, "flag": True}
    assert tblog.epoch_scalars(ev) == {"loss/train": 0.5, "learning_rate": 1e-3}
