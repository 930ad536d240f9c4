"""torchrun with 2 CPU processes (gloo): one run, one metrics stream, identical weights, same result as 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leukviz.runstore import runs

REPO = Path(__file__).resolve().parents[1]

# `python -m leukviz` with engine.evaluate wrapped: every process writes a digest of the weights it
# validates (after the epoch's updates and the BatchNorm broadcast), so the test can compare the ranks.
DIGESTING_LEUKVIZ = """
import hashlib, os, sys
from pathlib import Path

from leukviz import cli
from leukviz.training import engine

evaluate, folder = engine.evaluate, Path(sys.argv.pop(1))


def digesting_evaluate(model, *args, **kwargs):
    weights = b"".join(v.detach().cpu().numpy().tobytes() for v in model.state_dict().values())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{os.environ['RANK']}.txt").write_text(hashlib.sha256(weights).hexdigest())
    return evaluate(model, *args, **kwargs)


engine.evaluate = digesting_evaluate
sys.exit(cli.main())
"""


def _train(args: list[str], env: dict, timeout: int = 300) -> dict:
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_ranks_batches_together_are_the_single_process_batches():
    """Each global batch is split across the processes, so N processes train on what one process trains on
    (engine.epoch_batches); a stop asked of one process alone, or rank 0's statistics, need no process group
    when there is one process."""
    import numpy as np
    import torch

    from leukviz.training import distributed, engine

    one = engine.epoch_batches(40, 8, seed=3, epoch=2, d=distributed.Dist())
    ranks = [engine.epoch_batches(40, 8, seed=3, epoch=2, d=distributed.Dist(rank=r, world=2)) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 5
    for step, batch in enumerate(one):
        assert sorted(np.concatenate([ranks[0][step], ranks[1][step]])) == sorted(batch)
    assert engine.epoch_batches(40, 8, seed=3, epoch=3, d=distributed.Dist())[0].tolist() != one[0].tolist()
    assert distributed.stop_requested(True, distributed.Dist()) and not distributed.stop_requested(False, distributed.Dist())
    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean += 1
    distributed.share_buffers(distributed.Dist(), [bn])  # one process: nothing to take from rank 0
    assert torch.equal(bn.running_mean, torch.ones(2))


@pytest.mark.integration  # several processes train
@pytest.mark.timeout(600)
def test_two_gloo_processes_match_one_process(tiny_data, tmp_path):
    # Frozen BatchNorm statistics and an unweighted loss make one process and two the same computation
    # (per-process batch statistics would otherwise differ), so the comparison can be tight.
    common = ["train", "--backbone", "googlenet", "--weights", "none", "--data", str(tiny_data),
              "--epochs", "1", "--image-size", "32", "--batch-size", "16", "--augment", "none", "--freeze-bn",
              "--class-balance", "none", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LEUKVIZ_DIST_TIMEOUT": "120",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    script = tmp_path / "digesting_leukviz.py"
    script.write_text(DIGESTING_LEUKVIZ)
    ddp = _train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                  "--max-restarts", "0", str(script), str(tmp_path / "digests"), *common,
                  "--runs-dir", str(tmp_path / "ddp")], env)
    single = _train([sys.executable, "-m", "leukviz", *common, "--runs-dir", str(tmp_path / "one")], env)

    assert ddp["status"] == "finished" and ddp["run_id"] == single["run_id"]  # a run is its config
    assert [p.name for p in (tmp_path / "ddp").iterdir() if not p.name.startswith(".")] == [ddp["run_id"]]
    run = runs.Run(Path(ddp["run_dir"]))
    events = run.events()
    assert [e["type"] for e in events if e["type"] != "batch"] == ["start", "epoch"]  # one stream, not two
    assert events[0]["world_size"] == 2 and run.status["world_size"] == 2
    steps = [e["step"] for e in events if e["type"] == "batch"]
    assert steps == sorted(set(steps))
    digests = sorted((tmp_path / "digests").glob("rank*.txt"))
    assert len(digests) == 2 and digests[0].read_text() == digests[1].read_text(), "weights identical on ranks"
    a, b = ddp["metrics"], single["metrics"]
    # Same global batches and gradients; dropout masks and float summation order differ a little.
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-2)
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-2)
    assert a["val_acc"] == pytest.approx(b["val_acc"], abs=0.02)
