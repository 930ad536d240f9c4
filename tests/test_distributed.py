"""torchrun with 2 CPU processes (gloo): one run, one metrics stream, identical weights, same result as 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leukviz import runs

REPO = Path(__file__).resolve().parents[1]


def _train(args: list[str], env: dict, timeout: int = 300) -> dict:
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)
def test_two_gloo_processes_match_one_process(tiny_data, tmp_path):
    # Frozen BatchNorm statistics and an unweighted loss make one process and two the same computation
    # (per-process batch statistics would otherwise differ), so the comparison can be tight.
    common = ["-m", "leukviz", "train", "--backbone", "googlenet", "--weights", "none", "--data", str(tiny_data),
              "--epochs", "1", "--image-size", "32", "--batch-size", "16", "--augment", "none", "--freeze-bn",
              "--class-balance", "none", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LEUKVIZ_DIST_TIMEOUT": "120",
           "LEUKVIZ_RANK_DIGEST_DIR": str(tmp_path / "digests")}
    ddp = _train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                  "--max-restarts", "0", *common, "--runs-dir", str(tmp_path / "ddp")], env)
    single = _train([sys.executable, *common, "--runs-dir", str(tmp_path / "one")],
                    {**env, "LEUKVIZ_RANK_DIGEST_DIR": str(tmp_path / "digest-one")})

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
