"""A group of runs split between processes sharing one runs folder (runstore.shards, --shard I/N)."""

from __future__ import annotations

import argparse
import json

import pytest

from leukviz.cli import main
from leukviz.runstore import shards, trainer


def test_shards_split_a_group_disjointly_and_cover_it():
    items = list(range(11))
    parts = [shards.pick(items, shards.Shard(i, 3)) for i in (1, 2, 3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(x for p in parts for x in p) == items
    assert shards.pick(items, None) == items


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2"])
def test_a_wrong_shard_is_refused_in_words(text):
    with pytest.raises(argparse.ArgumentTypeError, match="shard"):
        shards.parse(text)


def test_shard_without_a_group_is_refused(capsys):
    assert main(["train", "--shard", "1/2", "--weights", "none"]) == 2
    assert "--seeds" in capsys.readouterr().err


@pytest.mark.integration
def test_two_shards_train_disjoint_runs_and_a_third_call_trains_none(tiny_data, tmp_path, capsys, monkeypatch):
    """--seeds 3 in two shards over one runs folder: each trains its own seeds, none twice; the gathering call
    without --shard trains nothing and reports all three."""
    trained: list[str] = []
    real = trainer.train
    monkeypatch.setattr(trainer, "train", lambda run, **k: trained.append(run.run_id) or real(run, **k))
    args = ["train", "--backbone", "googlenet", "--weights", "none", "--epochs", "1", "--image-size", "32",
            "--data", str(tiny_data), "--seeds", "3", "--runs-dir", str(tmp_path), "--json"]
    ids = {}
    for shard in ("1/2", "2/2"):
        assert main([*args, "--shard", shard]) == 0
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        ids[shard] = [r["run_id"] for r in res["runs"]]
        assert res["shard"] == shard and all(r["status"] == "finished" for r in res["runs"])
    assert len(ids["1/2"]) == 2 and len(ids["2/2"]) == 1 and not set(ids["1/2"]) & set(ids["2/2"])
    assert sorted(trained) == sorted(ids["1/2"] + ids["2/2"])  # each trained once, by its shard
    trained.clear()
    assert main(args) == 0
    gathered = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained == [] and sorted(r["run_id"] for r in gathered["runs"]) == sorted(ids["1/2"] + ids["2/2"])
    assert gathered["spread"]["val_f1"]["n"] == 3


def _intervals(group):
    """(start, end) of each run's training, from its own files: the start event and the final status."""
    from leukviz.core import events

    out = []
    for r in group:
        start = events.latest_start(r.events())
        out.append((float(start["time"]), float(r.status["updated"])))
    return out


def _most_at_once(intervals) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    return most


def test_cpu_workers_split_the_cores_and_queue_apart():
    from leukviz.core import paths
    from leukviz.runstore import pool

    envs = pool.worker_envs("cpu", 2, gpus=0)
    assert len(envs) == 2 and envs[0][paths.DEVICE_SLOT] != envs[1][paths.DEVICE_SLOT]
    assert int(envs[0]["OMP_NUM_THREADS"]) >= 1
    gpus = pool.worker_envs("auto", 1, gpus=3)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in gpus] == ["0", "1", "2"]
    assert pool.worker_envs("cpu", 1, gpus=0) == [{}]  # one worker: the run as it always ran


@pytest.mark.integration
def test_a_pool_of_two_cpu_workers_runs_four_runs_two_at_a_time_and_stop_reaches_each(tiny_data, tmp_path):
    from helpers import tiny_config
    from leukviz.models import config
    from leukviz.runstore import pool, runs

    def group(epochs, root):
        cfgs = config.repeats(tiny_config("googlenet", tiny_data, epochs=epochs), 4)
        return [runs.run_for(c, root) for c in cfgs]

    done = group(1, tmp_path / "a")
    p = pool.Pool(pool.worker_envs("cpu", 2, gpus=0), "cpu", poll=0.2)
    states = p.run(done)
    assert set(states.values()) == {"finished"}
    assert p.peak == 2 and _most_at_once(_intervals(done)) == 2  # from the runs' own files, not the pool's word
    assert all((r.dir / "train.log").exists() and r.can_resume is False for r in done)

    long = group(200, tmp_path / "b")
    p = pool.Pool(pool.worker_envs("cpu", 2, gpus=0), "cpu", poll=0.2)
    states = p.run(long, should_stop=lambda: sum(r.state == "running" and len(r.epochs()) >= 1 for r in long) >= 2)
    assert sorted(states.values()) == ["new", "new", "stopped", "stopped"]  # each in flight stopped, none started after
    assert all(r.can_resume for r in long if r.state == "stopped")
