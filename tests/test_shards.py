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
