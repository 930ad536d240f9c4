"""The learning-rate finder: the sweep's rates, the smoothing, the suggestion rule, the cache, the CLI, the
progress and its estimate, its Stop, and the sweep in a child process under the run store's one job supervisor
(runstore.sweeps: launch, status, stop, cancel, follow, reaping)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from leukviz import cli
from leukviz.models import config
from leukviz.runstore import processes, supervisor, sweeps
from leukviz.training import lrfind


def synthetic_curve(lrs: np.ndarray) -> np.ndarray:
    """A typical finder curve: flat, a fall centred on 1e-4, the lowest loss near 1e-2, then a blow-up."""
    x = np.log10(lrs)
    fall = 1.0 / (1.0 + np.exp(-(x + 4) * 3))  # 0 -> 1 around 1e-4
    rise = np.exp((x + 2) * 2.5) * 0.05  # grows past 1e-2
    return 2.0 - 1.5 * fall + rise


def test_the_sweep_is_geometric_from_start_to_end():
    r = lrfind.rates(1e-7, 1.0, 100)
    assert r[0] == pytest.approx(1e-7) and r[-1] == pytest.approx(1.0) and len(r) == 100
    assert np.allclose(r[1:] / r[:-1], r[1] / r[0])


def test_smoothing_is_bias_corrected_and_keeps_the_minimum_in_place():
    assert lrfind.ema([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])  # no pull towards 0
    assert lrfind.smooth([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])
    noisy = 1.0 + np.random.default_rng(0).normal(0, 0.3, 300)
    assert np.std(lrfind.smooth(noisy)[20:-20]) < 0.2 * np.std(noisy)
    v = np.abs(np.arange(101) - 60.0)  # a V with its lowest point at step 60
    assert int(np.argmin(lrfind.smooth(v))) == 60 and int(np.argmin(lrfind.ema(v))) > 60


def test_the_suggestion_on_a_synthetic_curve_is_a_tenth_of_the_minimum():
    lrs = lrfind.rates(1e-7, 1.0, 200)
    loss = synthetic_curve(lrs)
    at_min = lrs[int(np.argmin(loss))]
    assert 3e-3 < at_min < 3e-2  # the curve is what it says
    s = lrfind.suggest(lrs, loss)
    assert s == pytest.approx(at_min / 10)
    assert 3e-4 < s < 3e-3  # on the fall, below the blow-up
    # noise and smoothing leave it within a factor of two
    noisy = loss + np.random.default_rng(1).normal(0, 0.05, len(loss))
    assert at_min / 20 < lrfind.suggest(lrs, lrfind.smooth(noisy)) < at_min / 5
    # a low first step (few losses averaged) is not taken for the minimum
    early = loss.copy()
    early[2] = 0.1
    assert lrfind.suggest(lrs, early) == pytest.approx(s)


def test_the_cache_key_ignores_what_the_sweep_does_not_use():
    cfg = config.resolve("googlenet", "quick", "none", "demo", image_size=32)
    same = dataclasses.replace(cfg, lr=3e-4, epochs=9, patience=2, select="best")
    assert lrfind.cache_key(cfg, "fp") == lrfind.cache_key(same, "fp")
    assert lrfind.cache_key(cfg, "fp") != lrfind.cache_key(dataclasses.replace(cfg, batch_size=8), "fp")
    assert lrfind.cache_key(cfg, "fp") != lrfind.cache_key(cfg, "other data")


@pytest.mark.integration
def test_lr_find_cli_runs_end_to_end_and_is_cached(tiny_data, capsys):
    args = ["lr-find", "--backbone", "googlenet", "--data", str(tiny_data), "--weights", "none",
            "--image-size", "32", "--batch-size", "32", "--steps", "30", "--json"]
    assert cli.main(args) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["cached"] is False and 3 <= res["steps_done"] <= 30
    assert len(res["rates"]) == len(res["losses"]) == len(res["smoothed"]) == res["steps_done"]
    assert res["rates"][0] == pytest.approx(lrfind.START)
    assert res["rates"][0] <= res["suggestion"] <= res["rates"][-1]
    assert res["suggestion"] == pytest.approx(lrfind.suggest(res["rates"], res["smoothed"]))
    assert cli.main(args[:-1] + ["--lr", "0.01", "--json"]) == 0  # another rate: the same sweep, cached
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["cached"] is True and again["suggestion"] == res["suggestion"]
    assert cli.main(args[:-1]) == 0
    out = capsys.readouterr().out
    assert "your rate 0.001 is " in out and "a tenth of the minimum" in out  # the configuration's rate, checked


# ------------------------------------------------------------------------------------------ progress and estimate

def test_progress_text_says_it_prepares_then_estimates_the_time_left():
    frac, text = lrfind.progress_text(lrfind.progress_info(100, started=0.0, now=0.0))
    assert frac == 0.0 and text == "Preparing data and model…"
    assert lrfind.progress_text(None) == (0.0, "Preparing data and model…")
    info = lrfind.progress_info(100, started=900.0, step=20, seconds_per_step=0.875, now=1000.0)
    assert info["phase"] == "sweeping" and info["started"] == 900.0
    frac, text = lrfind.progress_text(info, now=1000.0)
    assert frac == pytest.approx(0.2)
    assert text == "Finding a learning rate: step 20 of at most 100 · about 1 min 10 s left…"
    # the time since the file was written counts
    assert "about 1 min left" in lrfind.progress_text(info, now=1010.0)[1]
    assert "about 10 s left" in lrfind.progress_text(info, now=1060.0)[1]
    assert "almost done" in lrfind.progress_text(info, now=1100.0)[1]
    # one step done: the time per step is not known yet, so no estimate
    frac, text = lrfind.progress_text(lrfind.progress_info(100, 0.0, step=1, now=5.0), now=6.0)
    assert frac == pytest.approx(0.01) and "step 1 of at most 100" in text and "left" not in text
    assert "1 h 05 min left" in lrfind.progress_text({**info, "seconds_per_step": 48.75}, now=1000.0)[1]
    # rounded, never "60 s" or "60 min"
    assert [lrfind._about(t) for t in (0, 12, 58, 61, 131, 3598, 3900)] == [
        "5 s", "10 s", "1 min", "1 min", "2 min 10 s", "1 h 00 min", "1 h 05 min"]


def test_find_writes_its_phase_start_and_time_per_step_while_it_sweeps(tmp_path, monkeypatch):
    cfg = config.resolve("googlenet", "quick", "none", "demo", image_size=32)
    seen = []

    def fake_sweep(cfg_, cache_dir, device_pref, steps, log, progress, should_stop=None):
        path = lrfind.progress_path(cfg, "fp", tmp_path, steps)
        seen.append(json.loads(path.read_text()))  # before the first step: preparing
        for step in range(1, 11):
            time.sleep(0.01)
            progress(step, steps)
            seen.append(json.loads(path.read_text()))
        lrs = lrfind.rates(steps=steps)[:10].tolist()
        return {"rates": lrs, "losses": [1.0] * 10, "smoothed": [1.0] * 10, "suggestion": lrs[0]}

    monkeypatch.setattr(lrfind, "sweep", fake_sweep)
    res, hit = lrfind.find(cfg, "fp", tmp_path, steps=40)
    assert hit is False and res["suggestion"] == pytest.approx(lrfind.START)
    assert seen[0]["phase"] == "preparing" and seen[0]["step"] == 0 and seen[0]["steps"] == 40
    started = seen[0]["started"]
    assert all(s["started"] == started for s in seen)
    assert seen[1]["phase"] == "sweeping" and seen[1]["step"] == 1 and "seconds_per_step" not in seen[1]
    assert seen[-1]["step"] == 10 and 0.005 < seen[-1]["seconds_per_step"] < 1.0
    assert "left" in lrfind.progress_text(seen[-1])[1]
    assert not lrfind.progress_path(cfg, "fp", tmp_path, 40).exists()  # gone once stored
    assert lrfind.cached(cfg, "fp", tmp_path, 40)["suggestion"] == res["suggestion"]


# ----------------------------------------------------------------------------------------- in a child process

@pytest.fixture()
def launches(monkeypatch):
    """An empty table of this process's launches (the supervisor's); whatever a test leaves running is ended
    and reaped."""
    table: dict = {}
    monkeypatch.setattr(processes, "LAUNCHES", table)
    yield table
    for launch in table.values():
        supervisor.end(launch.proc)


def child(monkeypatch, code: str) -> None:
    """launch starts `python -c code` (with the config file and steps as arguments) instead of the sweep."""
    monkeypatch.setattr(sweeps, "_command",
                        lambda config_file, steps: [sys.executable, "-c", code, str(config_file), str(steps)])


def wait_until_exited(pid: int, timeout: float = 60) -> None:
    """Until the child has exited (a zombie, or gone) — without reaping it, which is what is tested."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return
        time.sleep(0.05)
    raise AssertionError(f"child {pid} still runs")


def gone(pid: int) -> bool:
    """No process, not even a defunct one (a zombie keeps its /proc entry until it is reaped)."""
    return not Path(f"/proc/{pid}").exists()


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")


@needs_proc
def test_cancel_ends_the_child_reaps_it_and_leaves_nothing(tmp_path, monkeypatch, launches):
    cfg = config.resolve("googlenet", "quick", "none", "demo", image_size=32)
    child(monkeypatch, "import time; time.sleep(60)")
    assert sweeps.cancel(cfg, "fp", tmp_path) is False  # nothing to cancel
    assert sweeps.launch(cfg, "fp", tmp_path) is True
    assert sweeps.launch(cfg, "fp", tmp_path) is False  # already sweeping
    proc = launches[lrfind.result_path(cfg, "fp", tmp_path)].proc
    where, info = sweeps.status(cfg, "fp", tmp_path)
    assert where == "running" and lrfind.progress_text(info)[1] == "Preparing data and model…"
    assert sweeps.running_any() is True
    t0 = time.time()
    assert sweeps.cancel(cfg, "fp", tmp_path) is True
    assert time.time() - t0 < supervisor.TERM_WAIT  # SIGTERM was enough
    assert proc.returncode is not None and gone(proc.pid)  # ended and reaped: no zombie
    assert sweeps.status(cfg, "fp", tmp_path) == ("none", {})
    assert sweeps.running_any() is False and lrfind.cached(cfg, "fp", tmp_path) is None
    folder = lrfind.result_path(cfg, "fp", tmp_path).parent
    assert not list(folder.glob("*.progress.json")) and not list(folder.glob(".*"))
    assert sweeps.cancel(cfg, "fp", tmp_path) is False


@needs_proc
def test_cancel_kills_a_child_that_ignores_sigterm(tmp_path, monkeypatch, launches):
    cfg = config.resolve("googlenet", "quick", "none", "demo", image_size=32)
    ready = tmp_path / "ready"
    child(monkeypatch, f"import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                       f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)")
    monkeypatch.setattr(supervisor, "TERM_WAIT", 0.5)
    assert sweeps.launch(cfg, "fp", tmp_path)
    proc = launches[lrfind.result_path(cfg, "fp", tmp_path)].proc
    deadline = time.time() + 60
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert sweeps.cancel(cfg, "fp", tmp_path) is True
    assert proc.returncode == -9 and gone(proc.pid)


@needs_proc
def test_status_reaps_a_finished_child_also_when_its_result_is_cached(tmp_path, monkeypatch, launches):
    cfg = config.resolve("googlenet", "quick", "none", "demo", image_size=32)
    child(monkeypatch, "pass")
    assert sweeps.launch(cfg, "fp", tmp_path)
    proc = launches[lrfind.result_path(cfg, "fp", tmp_path)].proc
    wait_until_exited(proc.pid)
    assert not gone(proc.pid)  # defunct until this process reaps it
    store = {"suggestion": 1e-3, "rates": [1e-4, 1e-3], "losses": [0.7, 0.6], "smoothed": [0.7, 0.65]}
    from leukviz.core.storage import atomic_write_json

    atomic_write_json(lrfind.result_path(cfg, "fp", tmp_path), store)  # as if the child had stored it
    assert sweeps.status(cfg, "fp", tmp_path)[0] == "done"
    assert proc.returncode == 0 and gone(proc.pid)
    assert sweeps.launch(cfg, "fp", tmp_path) is False  # cached


@needs_proc
def test_launch_gives_the_child_its_config_and_cache_and_a_failure_is_reaped(tmp_path, monkeypatch, launches):
    """The child sweeps exactly the settings given (cfg.to_dict() in its config file) into the cache folder
    given; one that exits without a result is a failure with its output's last lines."""
    cfg = config.resolve("resnet50", "quick", "none", "demo", image_size=48, batch_size=8, lr=3e-4)
    child(monkeypatch, "import os, sys; print(open(sys.argv[1]).read()); "
                       "print('cache', os.environ['LEUKVIZ_CACHE']); print('steps', sys.argv[2]); sys.exit(3)")
    assert sweeps.launch(cfg, "fp", tmp_path, steps=30)
    proc = launches[lrfind.result_path(cfg, "fp", tmp_path, 30)].proc
    wait_until_exited(proc.pid)
    assert sweeps.running_any() is False  # and it reaped it
    assert proc.returncode == 3 and gone(proc.pid)
    where, info = sweeps.status(cfg, "fp", tmp_path, steps=30)
    assert where == "failed"
    lines = info["error"].splitlines()
    assert f"cache {tmp_path.resolve()}" in lines and "steps 30" in lines
    config_file = lrfind.result_path(cfg, "fp", tmp_path, 30).with_suffix(".config.json")
    assert config.RunConfig.from_dict(json.loads(config_file.read_text())) == cfg
    assert sweeps.launch(cfg, "fp", tmp_path, steps=30) is True  # a failed sweep can start again


def test_the_finder_keeps_a_rate_in_the_basin_and_replaces_one_past_it():
    """The lowest smoothed loss 0.5 at 1e-3, rising to 1.2 at the sweep's end (3e-2), divergence above: the
    rate on screen is kept while its loss is at most BASIN above the lowest, replaced by a tenth of the
    minimum where the loss has climbed past that, or beyond the sweep."""
    lrs = np.geomspace(1e-7, 3e-2, 80)
    smoothed = 0.5 + 0.7 * np.maximum(0, np.log10(lrs) + 3) ** 2 / np.log10(3e-2 / 1e-3) ** 2
    smoothed[lrs < 1e-3] += 0.2 * (np.log10(1e-3) - np.log10(lrs[lrs < 1e-3])) / 4  # higher at tiny rates too
    res = {"rates": lrs.tolist(), "smoothed": smoothed.tolist(), "suggestion": 1e-4}
    keep = lrfind.advise(res, 1e-3)
    assert keep.keep and keep.rate == 1e-3 and "keep it" in keep.text and "+0%" in keep.text
    assert lrfind.advise(res, 1e-7).keep  # +40 %: a slow rate, not a dangerous one
    assert lrfind.advise(res, 5e-3).keep  # +31 %, as ResNet50's preset rate on one real fold (+38 %): kept
    high = lrfind.advise(res, 3e-2)  # +140 %: well up towards divergence
    assert not high.keep and high.rate == 1e-4 and "outside the loss's basin" in high.text
    far = lrfind.advise(res, 0.1)  # the sweep stopped (diverged) before it
    assert not far.keep and "diverged before reaching it" in far.text
    assert lrfind.loss_at(res, 1e-3) == pytest.approx(0.5, abs=1e-3) and lrfind.loss_at(res, 1.0) is None


def test_a_sweep_with_no_finite_loss_is_an_error_and_caches_nothing(tmp_path, monkeypatch):
    """A weights file of NaNs gives NaN from the first step: no suggestion (it used to be 1e-07, cached)."""
    from types import SimpleNamespace

    import torch

    from leukviz.training import engine

    class NaNs(torch.nn.Module):
        def forward(self, x):
            return torch.full((len(x), 2), float("nan"), requires_grad=True)

    model = NaNs()
    state = SimpleNamespace(train_model=model, frozen=[], opt=torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1),
                            device=torch.device("cpu"), train_x=torch.zeros((8, 8, 8, 3), dtype=torch.uint8),
                            train_y=torch.zeros(8, dtype=torch.long), dist=engine.Dist(), amp=None,
                            criterion=torch.nn.CrossEntropyLoss(), feats=None, scaler=None,
                            spec=engine.backbones.get_spec("googlenet"))
    monkeypatch.setattr(engine, "setup", lambda *a, **k: state)
    cfg = config.resolve("googlenet", "quick", "none", "demo", batch_size=4)
    state.cfg = cfg
    with pytest.raises(lrfind.LrFindError, match="not finite"):
        lrfind.find(cfg, "fp", tmp_path, steps=20)
    assert lrfind.cached(cfg, "fp", tmp_path, 20) is None


@pytest.mark.parametrize("edit", [{"suggestion": "abc"}, {"suggestion": -5}, {"suggestion": float("nan")},
                                  {"suggestion": 3.0}, {"losses": [1.0, "x"]}, {"rates": []}, "not an object"])
def test_a_damaged_or_hand_edited_sweep_is_never_served_and_is_swept_again(tmp_path, monkeypatch, edit):
    cfg = config.resolve("googlenet", "quick", "none", "demo", image_size=32)
    lrs = lrfind.rates(steps=20)[:4].tolist()
    good = {"rates": lrs, "losses": [1.0, 0.9, 0.8, 0.9], "smoothed": [1.0, 0.95, 0.9, 0.9], "suggestion": lrs[1]}
    path = lrfind.result_path(cfg, "fp", tmp_path, 20)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**good, **edit} if isinstance(edit, dict) else edit))
    assert lrfind.cached(cfg, "fp", tmp_path, 20) is None
    monkeypatch.setattr(lrfind, "sweep", lambda *a, **k: good)
    res, hit = lrfind.find(cfg, "fp", tmp_path, steps=20)  # a new sweep replaces it
    assert not hit and res["suggestion"] == lrs[1] and lrfind.cached(cfg, "fp", tmp_path, 20)["suggestion"] == lrs[1]


def _fake_state(model, cfg):
    """A training state as engine.setup gives one, for a model that needs no data (as the NaN test's)."""
    from types import SimpleNamespace

    import torch

    from leukviz.training import engine

    return SimpleNamespace(train_model=model, frozen=[], opt=torch.optim.SGD(model.parameters(), lr=1),
                           device=torch.device("cpu"), train_x=torch.zeros((8, 8, 8, 3), dtype=torch.uint8),
                           train_y=torch.zeros(8, dtype=torch.long), dist=engine.Dist(), amp=None,
                           criterion=torch.nn.CrossEntropyLoss(), feats=None, scaler=None,
                           spec=engine.backbones.get_spec("googlenet"), cfg=cfg)


def test_a_stop_file_stops_the_sweep_between_steps_and_caches_nothing(tmp_path, monkeypatch):
    """The sweep's Stop is a run's: its stop file (sweeps.stop) ends it before the next step; find caches
    nothing, removes the served request, and the CLI's worker exits with STOPPED_EXIT (sweeps: not a failure)."""
    import torch

    from leukviz.training import engine

    cfg = config.resolve("googlenet", "quick", "none", "demo", batch_size=4)
    stop = lrfind.stop_path(lrfind.result_path(cfg, "fp", tmp_path, 20))

    class Finite(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.calls = torch.nn.Parameter(torch.zeros(2)), 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                sweeps.stop(cfg, "fp", tmp_path, 20)  # asked during the third step
            return self.w.expand(len(x), 2) * 1.0

    model = Finite()
    monkeypatch.setattr(engine, "setup", lambda *a, **k: _fake_state(model, cfg))
    with pytest.raises(lrfind.SweepStopped, match="stopped at step 3 of 20"):
        lrfind.find(cfg, "fp", tmp_path, steps=20)
    assert model.calls == 3  # no step after the Stop
    assert lrfind.cached(cfg, "fp", tmp_path, 20) is None and not stop.exists()
    assert not lrfind.progress_path(cfg, "fp", tmp_path, 20).exists()


@needs_proc
def test_a_sweep_is_a_job_of_the_one_supervisor_and_a_stopped_one_is_not_a_failure(tmp_path, monkeypatch, launches):
    """A sweep is launched into the supervisor's table of this process's launches (beside the runs), with its
    stop file cleared at launch as a run's; a worker that took a Stop (exit STOPPED_EXIT) leaves the sweep
    "none" (the page offers it again), not "failed"; follow yields its progress, then its outcome."""
    cfg = config.resolve("googlenet", "quick", "none", "demo", image_size=32)
    out = lrfind.result_path(cfg, "fp", tmp_path)
    out.parent.mkdir(parents=True)
    lrfind.stop_path(out).touch()  # an old Stop: must not stop the new sweep
    child(monkeypatch, "import pathlib, sys, time\n"
                       "stop = pathlib.Path(sys.argv[1]).with_suffix('').with_suffix('.stop')\n"
                       "while not stop.exists(): time.sleep(0.05)\n"
                       "stop.unlink(); sys.exit(%d)" % lrfind.STOPPED_EXIT)
    assert sweeps.launch(cfg, "fp", tmp_path)
    assert not lrfind.stop_path(out).exists()
    launch = launches[out]
    assert launch.kind == sweeps.SWEEP and launch.proc.poll() is None
    seen = []
    for ev in sweeps.follow(cfg, "fp", tmp_path, poll=0.05, timeout=60):
        seen.append(ev)
        if len(seen) == 1:
            assert sweeps.status(cfg, "fp", tmp_path)[0] == "running" and ev["phase"] == "preparing"
            sweeps.stop(cfg, "fp", tmp_path)
    assert seen[-1] == {"state": "none"} and launch.proc.returncode == lrfind.STOPPED_EXIT
    assert sweeps.status(cfg, "fp", tmp_path) == ("none", {}) and not sweeps.running_any()
    assert sweeps.launch(cfg, "fp", tmp_path) is True  # and it can start again
