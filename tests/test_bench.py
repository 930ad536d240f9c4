"""The benchmark is honest: both paths read the same files, labels and size, start from the same weights, and
each speed-up is measured from the same start (the head-only fast path's own tests: test_features.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from leukviz.benchmarks import bench
from leukviz.datasets import cnmc, data
from leukviz.models import preprocess
from leukviz.models.config import resolve


def test_plain_and_leukviz_read_the_same_files_labels_and_size(tiny_data, tmp_path):
    bd = bench.bench_data(str(tiny_data), 0, tmp_path / "cache")
    on_disk = sorted(str(p) for p in (tiny_data / "training_data" / "fold_0").rglob("*.png"))
    assert sorted(bd.paths) == on_disk and bd.n == len(on_disk)

    plain = bench.plain_dataset(bd, 32, "resnet50")  # the studies' plain loop (training/plain.py) over them
    assert plain.paths == bd.paths
    plain_labels = list(plain.labels)
    assert plain_labels == bd.labels.tolist() == bd.dataset.index["label"].tolist()
    assert bd.dataset.index["path"].tolist() == bd.paths
    # the class of every file is its folder's name, on both sides
    assert all(cnmc.CNMC_CLASSES[y] == Path(p).parent.name for p, y in zip(bd.paths, plain_labels))

    images, ok = data.image_cache(bd.dataset, 32, False, tmp_path / "cache")
    assert ok.all() and images.shape == (bd.n, 32, 32, 3)
    for i in (0, bd.n - 1):  # the same pixels, up to the two resizers' rounding and the plain loop's random flips
        x, y = plain[i]
        assert x.shape == (3, 32, 32) and y == bd.labels[i]
        ours = preprocess.normalize(torch.from_numpy(np.array(images[i:i + 1])), "resnet50")[0]
        flips = (ours, ours.flip(1), ours.flip(2), ours.flip(1, 2))
        assert min(float((f - x).abs().mean()) for f in flips) < 0.05


def test_both_paths_start_from_the_same_weights():
    cfg = resolve("googlenet", "quick", "none", image_size=32)
    a, b = bench.build(cfg, 0).state_dict(), bench.build(cfg, 0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.integration
@pytest.mark.bench
def test_ablation_adds_one_speed_up_per_row_from_the_same_start():
    """Each backbone gets the three steps in order (fp32 NCHW, + channels-last, + the run's precision), the
    allocator row where it can be tuned, and the frozen-BatchNorm row only for a backbone with BatchNorm;
    every row timed, from a copy of the same initial weights (the initial model is left untouched)."""
    bc = bench.BenchConfig(backbones=("googlenet",), image_size=32, batch_size=8, quick=True)
    init = bench.build(bench.run_config(bc, "googlenet"), 0)
    before = {k: v.clone() for k, v in init.state_dict().items()}
    images = np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    rows = bench.ablations(bc, images, np.arange(16) % 2, {"googlenet": init}, torch.device("cpu"),
                           lambda s: None)["googlenet"]
    steps = [r["step"] for r in rows]
    assert steps[:3] == [label for label, _, _ in bench.ABLATION_STEPS]
    assert steps[-1] == bench.ABLATION_FREEZE_BN and len(steps) in (4, 5)
    assert [r["precision"] for r in rows[:2]] == ["fp32", "fp32"]
    assert all(r["images_per_s"] > 0 and r["images"] >= 16 for r in rows)
    assert all(torch.equal(before[k], v) for k, v in init.state_dict().items())


@pytest.mark.integration
@pytest.mark.bench
def test_tiny_bench_end_to_end(tiny_data, capsys):
    from leukviz.cli import main

    rc = main(["bench", "--quick", "--backbone", "googlenet", "--image-size", "32", "--batch-size", "16",
               "--data", str(tiny_data), "--memory-files", "60", "--json"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    res = json.loads(out[-1])
    for key in ("speedup_full_vs_plain", "speedup_head_vs_plain", "roofline_fraction"):
        assert res[key]["googlenet"] > 0
    assert res["predict_all_p95_ms"] > 0 and res["peak_rss_mb"] > 0
    r = res["backbones"]["googlenet"]
    # the same number of images per epoch on both sides, and the same batch size and image size
    assert r["n_images"] == len(list((tiny_data / "training_data" / "fold_0").rglob("*.png")))
    assert res["config"]["batch_size"] == 16 and res["config"]["image_size"] == 32
    # at least 1 (plain) and 2 (leukviz) timed batches of 16, and as many more as fit in the minimum time
    assert r["plain_full"]["images"] >= 16 and r["plain_full"]["seconds"] >= res["config"]["min_seconds_plain"]
    assert r["leukviz_full"]["images"] >= 32 and r["leukviz_full"]["seconds"] >= res["config"]["min_seconds_leukviz"]
    mem = res["memory"]
    assert mem["n"] == mem["ok"] == 60 and "smaller stand-in" in mem["note"]  # nothing dropped as a duplicate
    assert any("--quick" in n for n in res["notes"])
    assert "leukviz full" in "\n".join(out[:-1])


_FAULTS = r"""
import resource, sys, torch
from leukviz.models import devices
tuned = devices.tune_cpu_allocator() if sys.argv[1] == "1" else False
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):  # 64 MB blocks, above glibc's largest mmap threshold; the tuned heap settles in a few
    x = torch.empty(16 * 2**20); x.fill_(1); del x
before = faults()
for _ in range(5):
    x = torch.empty(16 * 2**20); x.fill_(1); del x
print(tuned, faults() - before)
"""


@pytest.mark.integration
@pytest.mark.bench
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator tuning is Linux-only")
def test_tuned_allocator_reuses_freed_memory_instead_of_faulting_it_in_again():
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")

    def run(tune: str, **env) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _FAULTS, tune], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **env})
        tuned, faults = out.stdout.split()
        return tuned, int(faults)

    tuned, faults = run("1")
    if tuned != "True":
        pytest.skip("not glibc: no allocator tuning here")
    assert faults < pages  # freed blocks are reused: (almost) no new page faults
    assert run("0")[1] >= 4 * pages  # the default: every 64 MB block is mapped and faulted in again
    off, faults_off = run("1", LEUKVIZ_MALLOC_TUNE="0")  # the opt-out
    assert off == "False" and faults_off >= 4 * pages
