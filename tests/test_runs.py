"""Runs: complete folders, the cache, stop and resume, crashes, one process per run."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch

from helpers import FakeProc, make_run
from leukviz.models.config import resolve
from leukviz.runstore import processes, runs, supervisor, trainer
from leukviz.serving import inference
from leukviz.training import checkpoints, engine


def tiny_cfg(data, **kw):
    base = dict(epochs=2, image_size=32, batch_size=16)
    base.update(kw)
    return resolve(kw.pop("backbone", "googlenet"), "quick", "none", str(data),
                   **{k: v for k, v in base.items() if k != "backbone"})


@pytest.fixture(scope="module")
def trained(tiny_data, shared_runs, tmp_path_factory):
    """One finished run, and its resumable state as it stood when training ended (the run then deletes it).
    It is trained into the session's shared folder, where test_tblog's run of the same configuration finds
    it (one training for both); if that module trained it first, its resume state is gone, so one is trained
    here in a folder of this module's own."""
    run = runs.run_for(tiny_cfg(tiny_data), shared_runs)
    if run.state != "new":
        run = runs.run_for(tiny_cfg(tiny_data), tmp_path_factory.mktemp("runs"))
    copy = tmp_path_factory.mktemp("resume") / "last.pt"
    real = trainer._drop_resume_state

    def keep_a_copy(r, log):
        shutil.copyfile(r.dir / "last.pt", copy)
        real(r, log)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "_drop_resume_state", keep_a_copy)
        trainer.train(run, log=lambda s: None)
    return run, checkpoints.load_resume_state(copy)


@pytest.fixture(scope="module")
def finished(trained):
    return trained[0]


def test_a_finished_run_folder_is_complete(finished):
    names = {p.name for p in finished.dir.iterdir()}
    assert {"config.json", "status.json", "metrics.jsonl", "model.safetensors", "model.json",
            "val_predictions.csv", "train.log"} <= names
    assert "last.pt" not in names  # the resumable state (1.6 GB for VGG16) goes: a finished run never resumes
    assert finished.state == "finished"
    ep = finished.epochs()
    assert [e["epoch"] for e in ep] == [1, 2]
    assert all(e["val_loss"] != e["train_loss"] for e in ep)  # validation loss is its own measurement
    assert any(e["type"] == "batch" for e in finished.events())
    meta = json.loads((finished.dir / "model.json").read_text())
    assert meta["backbone"] == "googlenet" and meta["classes"] == ["hem", "all"] and meta["image_size"] == 32


def test_loaded_model_reproduces_the_saved_validation_predictions(finished):
    """Validation and single-image prediction share the preprocessing exactly."""
    import pandas as pd

    preds = pd.read_csv(finished.dir / "val_predictions.csv")
    lm = inference.load_model(finished.dir)
    rows = inference.predict_files(lm, preds["path"][:8].tolist())
    got = np.array([r["prob_raw_all"] for r in rows])
    best = json.loads((finished.dir / "model.json").read_text())["epoch"]
    assert best in (1, 2)
    np.testing.assert_allclose(got, preds["prob_all"][:8].to_numpy(), atol=1e-4)


def test_same_config_is_cached(finished, tiny_data):
    again = runs.run_for(tiny_cfg(tiny_data), finished.dir.parent)
    assert again.dir == finished.dir and again.state == "finished"


@pytest.mark.integration
def test_stop_then_resume_gives_one_continuous_history(tiny_data, tmp_path, finished):
    run = runs.run_for(tiny_cfg(tiny_data), tmp_path)
    batches = []

    def stop_after_three(ev):
        if ev["type"] == "batch":
            batches.append(ev)
            if len(batches) == 3 and ev["epoch"] == 1:
                supervisor.request_stop(run)

    with pytest.raises(engine.Stopped):
        trainer.train(run, log=lambda s: None, emit_hook=stop_after_three)
    assert run.state == "stopped" and (run.dir / "last.pt").exists()
    assert not run.epochs()
    trainer.train(run, resume=True, log=lambda s: None)
    assert run.state == "finished"
    ev = run.events()
    steps = [(e["epoch"], e["step"]) for e in ev if e["type"] == "batch"]
    assert steps == sorted(steps) and len(set(steps)) == len(steps), "no step twice, none out of order"
    assert [e["epoch"] for e in run.epochs()] == [1, 2]
    assert [e["type"] for e in ev if e["type"] in ("start", "resume")] == ["start", "resume"]
    # resumed training is the same computation as the uninterrupted one
    a, b = run.epochs()[-1], finished.epochs()[-1]
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_a_crash_is_recorded_as_failed_with_the_message(tiny_data, tmp_path):
    run = runs.run_for(tiny_cfg(tiny_data, epochs=1), tmp_path)

    def boom(ev):
        if ev["type"] == "batch" and ev["step"] >= 2:
            raise RuntimeError("simulated crash in the middle of epoch 1")

    with pytest.raises(RuntimeError):
        trainer.train(run, log=lambda s: None, emit_hook=boom)
    st = run.status
    assert st["state"] == "failed" and "simulated crash" in st["error"]
    assert [e["step"] for e in run.events() if e["type"] == "batch"][:2] == [1, 2]  # metrics so far are kept


def test_nan_loss_stops_with_a_clear_message(tiny_data, tmp_path, monkeypatch):
    run = runs.run_for(tiny_cfg(tiny_data, epochs=1, seed=5), tmp_path)
    real = torch.nn.CrossEntropyLoss.forward
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", lambda self, a, b: real(self, a, b) * float("nan"))
    with pytest.raises(engine.TrainingDiverged):
        trainer.train(run, log=lambda s: None)
    assert run.state == "failed" and "loss became nan" in run.status["error"]


@pytest.mark.integration
def test_dead_process_shows_as_interrupted_and_a_held_lock_blocks_a_second_trainer(tiny_data, tmp_path):
    run = runs.run_for(tiny_cfg(tiny_data, seed=9), tmp_path)
    runs.write_status(run, "running")
    assert run.state == "interrupted"  # nobody holds the lock: not 'running forever'
    with run.lock():
        assert run.state == "running"
        with pytest.raises(runs.AlreadyRunning):
            trainer.train(run, log=lambda s: None)


def test_the_kept_model_is_the_weight_average_of_the_last_epoch(trained):
    """The quick preset validates and keeps the moving average of the weights, of the last epoch (not the
    epoch that scored best on the validation subjects)."""
    from safetensors.torch import load_file

    finished, state = trained
    assert (finished.config.average, finished.config.select) == ("ema", "last")
    meta = json.loads((finished.dir / "model.json").read_text())
    assert meta["epoch"] == 2 and meta["metrics"]["val_f1"] == finished.epochs()[-1]["val_f1"]
    kept = load_file(str(finished.dir / "model.safetensors"))
    averaged = {k.removeprefix("module."): v for k, v in state["average"].items() if k.startswith("module.")}
    raw = state["model"]
    name = "fc.weight"
    assert torch.equal(kept[name], averaged[name]) and not torch.equal(kept[name], raw[name])
    start = next(e for e in finished.events() if e["type"] == "start")
    assert int(state["average"]["n_averaged"]) == start["steps_per_epoch"] * 2  # one update per step


@pytest.mark.integration
def test_select_best_keeps_the_best_epoch(tiny_data, tmp_path):
    run = runs.run_for(tiny_cfg(tiny_data, epochs=3, select="best", average="none", lr=0.05), tmp_path)
    trainer.train(run, log=lambda s: None)
    f1s = [e["val_f1"] for e in run.epochs()]
    meta = json.loads((run.dir / "model.json").read_text())
    assert meta["epoch"] == 1 + int(np.argmax(f1s)) and meta["metrics"]["val_f1"] == max(f1s)


def test_plan_says_what_starting_a_run_does(tiny_data, tmp_path):
    run = runs.run_for(tiny_cfg(tiny_data, seed=21), tmp_path, fingerprint="fp")
    assert run.state == "new" and runs.plan(run) == "train"
    runs.write_status(run, "stopped", error="stopped at epoch 1")
    assert runs.plan(run) == "train"  # nothing to resume from
    (run.dir / "last.pt").write_bytes(b"")
    assert runs.plan(run) == "resume"
    runs.write_status(run, "failed", error="boom")
    assert runs.plan(run) == "train"
    lock = run.lock()
    lock.acquire()
    try:
        runs.write_status(run, "running")
        assert runs.plan(run) == "attach"
    finally:
        lock.release()
    runs.write_status(run, "finished")
    # finished without its model is not cached: it trains again, and says why (issue 15)
    assert runs.plan_why(run) == ("train", "status.json says finished, but model.json is missing: it trains again")
    assert set(runs.PLANS) == {"cached", "attach", "resume", "train"}


def test_ensure_is_the_one_start_policy(tiny_data, tmp_path):
    """runs.ensure acts on plan: nothing for a cached run, nothing but "attach" for one a process has, the
    caller's start(run, resume) for the others; force archives a finished run and refuses one in training."""
    run = runs.run_for(tiny_cfg(tiny_data, seed=23), tmp_path, fingerprint="fp")
    calls = []

    def start(r, resume):
        calls.append((r.run_id, resume))

    assert runs.ensure(run, start) == "train" and calls == [(run.run_id, False)]
    runs.write_status(run, "stopped", error="stopped at epoch 1")
    (run.dir / "last.pt").write_bytes(b"")
    assert runs.ensure(run, start) == "resume" and calls[-1] == (run.run_id, True)
    finished = make_run(tmp_path / "done")
    calls.clear()
    assert runs.ensure(finished, start) == "cached" and calls == []
    assert runs.ensure(finished, start, force=True) == "train" and calls == [(finished.run_id, False)]
    assert list((finished.dir.parent / ".archive").iterdir()), "force moved the old results aside"
    assert finished.state == "new" and (finished.dir / "config.json").is_file()
    lock = run.lock()
    lock.acquire()
    try:
        runs.write_status(run, "running")
        calls.clear()
        assert runs.ensure(run, start) == "attach" and calls == []
        with pytest.raises(runs.AlreadyRunning, match="stop it before retraining"):
            runs.ensure(run, start, force=True)
    finally:
        lock.release()


def test_the_trainer_refuses_a_dataset_that_is_not_the_runs(tiny_data, tmp_path):
    run = runs.run_for(tiny_cfg(tiny_data, seed=22), tmp_path, fingerprint="0123456789abcdef")
    with pytest.raises(engine.DatasetChanged):
        trainer.train(run, log=lambda s: None)
    assert run.state == "failed"
    assert "not the one this run was created for" in run.status["error"]
    assert "0123456789ab" in run.status["error"] and not (run.dir / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------- read_status, start, retrain

def test_read_status_starting_then_dead_before_writing(tmp_path, monkeypatch):
    run = make_run(tmp_path, state=None, with_predictions=False)
    assert run.state == "new"
    monkeypatch.setitem(processes.LAUNCHES, run.dir, processes.Launch(time.time(), FakeProc(None)))
    assert run.state == "starting"
    assert supervisor.start(run) is False  # never launched twice
    (run.dir / "train.log").write_text("Traceback...\nImportError: no module named x\n")
    monkeypatch.setitem(processes.LAUNCHES, run.dir, processes.Launch(time.time(), FakeProc(1)))
    st = run.status
    assert st["state"] == "failed" and "ImportError" in st["error"]
    # once the process writes its own status, that is the truth
    monkeypatch.setitem(processes.LAUNCHES, run.dir, processes.Launch(time.time() - 60, FakeProc(0)))
    runs.write_status(run, "stopped", error="stopped at epoch 1")
    assert run.state == "stopped"


def test_start_attaches_instead_of_launching_a_locked_run(tmp_path, monkeypatch):
    run = make_run(tmp_path, state="running", with_predictions=False)
    launched = []
    monkeypatch.setattr(supervisor, "launch", lambda *a, **k: launched.append(a))
    lock = run.lock()
    lock.acquire()
    try:
        assert run.state == "running"
        assert supervisor.start(run) is False
    finally:
        lock.release()
    assert launched == []
    assert run.state == "interrupted"  # nobody holds the lock any more


def test_retrain_archives_then_launches(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    monkeypatch.setattr(supervisor, "launch", lambda run, resume=False, nproc=1, **k: FakeProc(None))
    assert supervisor.retrain(run) is True
    assert not (run.dir / "model.safetensors").exists()
    assert (run.dir / "config.json").exists()
    assert any((tmp_path / ".archive").iterdir())
    assert run.state == "starting"


# ---------------------------------------------------------------------------------------------- delete

@pytest.mark.parametrize("state", ["finished", "failed", "interrupted", None])
def test_delete_moves_the_run_folder_into_the_archive_and_out_of_every_listing(tmp_path, state):
    run = make_run(tmp_path, state=state)
    other = make_run(tmp_path, seed=1)
    files = sorted(p.name for p in run.dir.iterdir())
    dest = runs.delete(run)
    assert not run.dir.exists() and dest.parent == tmp_path / ".archive" and dest.name.startswith(run.run_id + "-")
    assert set(files) <= {p.name for p in dest.iterdir()}  # moved whole: nothing lost
    assert [r.run_id for r in runs.list_runs(tmp_path)] == [other.run_id]
    with pytest.raises(runs.NoSuchRun):
        runs.get_run(run.run_id, tmp_path)


def test_delete_takes_a_damaged_run_and_the_same_id_twice_never_collides(tmp_path):
    run = make_run(tmp_path)
    (run.dir / "config.json").write_text("{not json")
    assert run.is_damaged
    first = runs.delete(run)
    again = make_run(tmp_path)  # the same configuration trained again, deleted again within the second
    assert again.run_id == run.run_id
    second = runs.delete(again)
    assert first != second and first.is_dir() and second.is_dir()
    assert (first / "config.json").read_text() == "{not json" and runs.list_runs(tmp_path) == []


def test_delete_refuses_an_active_run_and_leaves_it_in_place(tmp_path, monkeypatch):
    running = make_run(tmp_path, state="running", with_predictions=False)
    lock = running.lock()
    lock.acquire()
    try:
        with pytest.raises(runs.AlreadyRunning, match=f"run {running.run_id} is training: stop it first"):
            runs.delete(running)
    finally:
        lock.release()
    # a finished status proves nothing while a trainer holds the lock (a retrain under way)
    finished = make_run(tmp_path, seed=1)
    lock = finished.lock()
    lock.acquire()
    try:
        with pytest.raises(runs.AlreadyRunning, match="is training"):
            runs.delete(finished)
    finally:
        lock.release()
    starting = make_run(tmp_path, seed=2, state=None)
    monkeypatch.setitem(processes.LAUNCHES, starting.dir, processes.Launch(time.time(), FakeProc(None)))
    with pytest.raises(runs.AlreadyRunning, match="is starting: stop it first"):
        runs.delete(starting)
    assert {r.run_id for r in runs.list_runs(tmp_path)} == {running.run_id, finished.run_id, starting.run_id}
    assert not (tmp_path / ".archive").exists() or not any((tmp_path / ".archive").iterdir())
    # once nobody holds it, the stale "running" reads as interrupted and the run can go
    assert running.state == "interrupted" and runs.delete(running).is_dir()


def test_delete_of_an_unknown_run_is_no_such_run(tmp_path):
    with pytest.raises(runs.NoSuchRun, match="no run 'abc123'"):
        runs.delete(runs.Run(tmp_path / "abc123"))


def test_training_in_a_library_caller_leaves_its_signals_alone(tiny_data, tmp_path):
    """trainer.train never installs signal handlers (a test runner's SIGTERM stays the runner's); only the worker
    entry (python -m leukviz train) turns SIGTERM into a Stop, through trainer.stop_on_signals."""
    import signal

    seen = []
    cfg = resolve("googlenet", "quick", "none", str(tiny_data), epochs=1, image_size=16, batch_size=64)
    run = runs.run_for(cfg, tmp_path / "runs")
    before = signal.getsignal(signal.SIGTERM)
    trainer.train(run, log=lambda s: None, emit_hook=lambda ev: seen.append(signal.getsignal(signal.SIGTERM)))
    assert seen and all(h is before for h in seen)
    with trainer.stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
        signal.raise_signal(signal.SIGTERM)  # asks the trainings of this process to stop, nothing else
        assert trainer._SIGNALLED.is_set()
    assert signal.getsignal(signal.SIGTERM) is before and not trainer._SIGNALLED.is_set()


def test_run_states_are_one_enum_that_reads_and_writes_as_plain_strings():
    import json

    assert [s.value for s in runs.State][:6] == list(runs.STATES)
    assert runs.State.FINISHED == "finished" and json.dumps(runs.State.STOPPED) == '"stopped"'
    assert f"{runs.State.NEW}" == "new" and "interrupted" in runs.RESUMABLE and "starting" in runs.ACTIVE
