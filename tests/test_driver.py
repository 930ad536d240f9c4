"""The one train-or-attach driver (runstore.driver) and the device pool that starts its runs through it
(runstore.pool: Pool.run waits, start_group launches and returns, as the Train page's Repeats do)."""

from __future__ import annotations

import json

import pytest

from helpers import make_run, tiny_config
from leukviz.core import paths
from leukviz.models import backbones
from leukviz.runstore import driver, pool, runs, supervisor, trainer


def _new(root, seed=0, **overrides):
    """A run folder that never trained (config.json only)."""
    return make_run(root, state=None, seed=seed, **overrides)


def test_decide_is_the_start_policy_with_the_weights_checked_first(tmp_path, monkeypatch):
    new, done = _new(tmp_path / "a"), make_run(tmp_path / "b")
    assert driver.decide(new) == driver.Plan("train", False) and driver.Plan("train").starts
    assert driver.decide(done) == driver.Plan("cached", False) and not driver.Plan("cached").starts
    assert driver.decide(done, force=True).action == "train" and done.state == "new"  # archived, trains again
    runs.write_status(new, "failed", error="disk full")
    (new.dir / "last.pt").write_bytes(b"")
    assert driver.decide(new) == driver.Plan("train", False)  # the policy resumes only a stopped run ...
    assert driver.decide(new, resume=True) == driver.Plan("train", True)  # ... --resume any resumable state
    checked = []
    monkeypatch.setattr(backbones, "ensure_weights", lambda name, weights: checked.append((name, weights)))
    driver.decide(_new(tmp_path / "c", seed=1))
    driver.decide(new, resume=True)  # a resume trains what is there: no weights needed
    assert checked == [("googlenet", "none")]


def test_carry_out_follows_a_run_another_process_took_and_keeps_what_training_raised(tmp_path, monkeypatch):
    run = _new(tmp_path)
    said, followed = [], []
    monkeypatch.setattr(supervisor, "follow", lambda r, **k: followed.append(r.run_id) or iter([{"type": "epoch"}]))

    def taken(r, **k):
        raise runs.AlreadyRunning("taken")

    monkeypatch.setattr(trainer, "train", taken)
    events = []
    out = driver.carry_out(run, driver.Plan("train"), said=said.append, progress=events.append)
    assert (out.action, said, followed, events) == ("attach", ["train", "attach"], [run.run_id], [{"type": "epoch"}])

    def boom(r, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(trainer, "train", boom)
    out = driver.carry_out(run, driver.Plan("train"))
    assert isinstance(out.error, RuntimeError) and not out.finished and out.why() == "RuntimeError: out of memory"
    assert driver.carry_out(make_run(tmp_path / "done"), driver.Plan("cached")).finished
    with pytest.raises(ValueError, match="where is one of"):
        driver.carry_out(run, driver.Plan("train"), where="elsewhere")


def test_carry_out_launched_and_detached(tmp_path, monkeypatch):
    run = _new(tmp_path)
    launched, followed = [], []
    monkeypatch.setattr(supervisor, "start", lambda r, **k: launched.append(k) or True)
    monkeypatch.setattr(supervisor, "follow", lambda r, **k: followed.append(r.run_id) or iter(()))
    out = driver.carry_out(run, driver.Plan("resume", True), where=driver.DETACHED, device="cpu", env={"X": "1"})
    assert out.action == "resume" and followed == []
    assert launched == [{"resume": True, "nproc": 1, "device": "cpu", "env": {"X": "1"}}]
    driver.carry_out(run, driver.Plan("train"), where=driver.LAUNCHED)
    assert followed == [run.run_id]  # launched, then followed to its end
    monkeypatch.setattr(supervisor, "start", lambda r, **k: False)  # another process is starting it
    assert driver.carry_out(run, driver.Plan("train"), where=driver.DETACHED).action == "attach"


def test_start_group_launches_each_run_on_the_workers_in_turn(tmp_path, monkeypatch):
    """The page's Repeats: every run that must train launched at once, the k-th on worker k mod W (its device
    queue then runs them one at a time), a cached run left as it is."""
    group = [_new(tmp_path, seed=s) for s in range(4)] + [make_run(tmp_path, seed=9)]
    envs = pool.worker_envs("cpu", 2, gpus=0)
    launched = []
    monkeypatch.setattr(supervisor, "start", lambda r, **k: launched.append((r.run_id, k["env"])) or True)
    actions = pool.start_group(group, envs, device="cpu")
    assert list(actions.values()) == ["train"] * 4 + ["cached"]
    assert [env[paths.DEVICE_SLOT] for _, env in launched] == [envs[k % 2][paths.DEVICE_SLOT] for k in range(4)]
    assert [r for r, _ in launched] == [r.run_id for r in group[:4]]
    monkeypatch.setattr(supervisor, "start", lambda r, **k: False)
    assert set(pool.start_group(group[:2], envs).values()) == {"attach"}  # another process has them


def test_a_signal_stops_the_pool_before_it_launches(tmp_path, monkeypatch):
    """Under the CLI's process entry Ctrl-C is a Stop (trainer.stop_on_signals), never a KeyboardInterrupt: the
    pool sees it and launches nothing more (its runs run in sessions of their own, out of the terminal's reach)."""
    group = [_new(tmp_path, seed=s) for s in range(3)]
    monkeypatch.setattr(trainer, "stop_requested", lambda: True)
    monkeypatch.setattr(supervisor, "start", lambda r, **k: pytest.fail("launched after a stop"))
    p = pool.Pool(pool.worker_envs("cpu", 2, gpus=0), "cpu", poll=0.01)
    assert set(p.run(group).values()) == {"new"} and p.stopped


def _running_at_once(group) -> int:
    from test_shards import _intervals, _most_at_once

    return _most_at_once(_intervals([r for r in group if r.state == "finished"]))


@pytest.mark.integration
def test_the_pages_repeats_run_two_at_a_time_and_stop_reaches_each_queued_or_running(tiny_data, tmp_path):
    """start_group (the Train page's Repeats) with 2 CPU workers: 4 repeats launched at once, never more than 2
    training at a time; Stop on every seed (the group's Stop) reaches each, queued or running, and each keeps
    what it needs to resume."""
    from leukviz.models import config

    def group(epochs, root):
        return [runs.run_for(c, root) for c in config.repeats(tiny_config("googlenet", tiny_data, epochs=epochs), 4)]

    envs = pool.worker_envs("cpu", 2, gpus=0)
    done = group(1, tmp_path / "a")
    assert set(pool.start_group(done, envs, device="cpu").values()) == {"train"}
    for r in done:
        for _ in supervisor.follow(r, poll=0.2):
            pass
    assert [r.state for r in done] == ["finished"] * 4 and _running_at_once(done) == 2

    long = group(200, tmp_path / "b")
    pool.start_group(long, envs, device="cpu")
    import time

    deadline = time.time() + 240
    while sum(r.state == "running" for r in long) < 2 and time.time() < deadline:
        time.sleep(0.2)
    states = [r.state for r in long]
    assert states.count("running") == 2 and states.count("queued") + states.count("starting") == 2, states
    for r in long:  # the group's Stop
        supervisor.request_stop(r)
    for r in long:
        for _ in supervisor.follow(r, poll=0.2, timeout=240):
            pass
    assert [r.state for r in long] == ["stopped"] * 4, [(r.state, r.status.get("error")) for r in long]
    assert sum("while queued" in (r.status.get("error") or "") for r in long) >= 1  # a queued one stopped too


@pytest.mark.integration
def test_a_study_on_the_pool_trains_its_runs_at_once_and_shards_split_it(tiny_data, tmp_path, capsys):
    """study leakage --workers 2: its two runs train at once, each its own process; with --shard each shard
    trains its own run, and the gathering call trains none and compares them."""
    from leukviz.cli import main

    args = ["study", "leakage", "--backbone", "googlenet", "--data", str(tiny_data), "--weights", "none",
            "--epochs", "1", "--image-size", "32", "--batch-size", "64", "--device", "cpu", "--json"]
    assert main([*args, "--runs-dir", str(tmp_path / "pool"), "--workers", "2"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pair = [runs.get_run(res[side]["run_id"], tmp_path / "pool") for side in ("image", "subject")]
    assert all(r.state == "finished" and (r.dir / "train.log").exists() for r in pair)
    assert _running_at_once(pair) == 2  # from the runs' own files
    ids = {}
    for shard in ("1/2", "2/2"):
        assert main([*args, "--runs-dir", str(tmp_path / "shards"), "--shard", shard]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["shard"] == shard and out["study_runs"] == 2 and len(out["runs"]) == 1
        ids[shard] = out["runs"][0]
    assert ids["1/2"] != ids["2/2"]
    assert main([*args, "--runs-dir", str(tmp_path / "shards")]) == 0
    captured = capsys.readouterr()
    gathered = json.loads(captured.out.strip().splitlines()[-1])
    assert {gathered["image"]["run_id"], gathered["subject"]["run_id"]} == set(ids.values())
    assert ": cached" in captured.err and ": training" not in captured.err  # the gathering call trained none
