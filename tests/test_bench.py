"""The benchmark is honest (both paths read the same files, labels and size) and the head-only fast path
trains the same head as the normal loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from leukviz.benchmarks import bench
from leukviz.core import filenames
from leukviz.datasets import cnmc, data
from leukviz.models import backbones, preprocess
from leukviz.models.config import resolve
from leukviz.training import engine, features


def test_plain_and_leukviz_read_the_same_files_labels_and_size(tiny_data, tmp_path):
    bd = bench.bench_data(str(tiny_data), 0, tmp_path / "cache")
    on_disk = sorted(str(p) for p in (tiny_data / "training_data" / "fold_0").rglob("*.png"))
    assert sorted(bd.paths) == on_disk and bd.n == len(on_disk)

    plain = bench.plain_dataset(bd, 32, "resnet50")
    assert [p for p, _ in plain.samples] == bd.paths
    plain_labels = [plain.target_transform(t) for _, t in plain.samples]
    assert plain_labels == bd.labels.tolist() == bd.dataset.index["label"].tolist()
    assert bd.dataset.index["path"].tolist() == bd.paths
    # the class of every file is its folder's name, on both sides
    assert all(cnmc.CNMC_CLASSES[y] == Path(p).parent.name for p, y in zip(bd.paths, plain_labels))

    images, ok = data.image_cache(bd.dataset, 32, False, tmp_path / "cache")
    assert ok.all() and images.shape == (bd.n, 32, 32, 3)
    for i in (0, bd.n - 1):  # the same pixels, up to the two resizers' rounding
        x, y = plain[i]
        assert x.shape == (3, 32, 32) and y == bd.labels[i]
        ours = preprocess.normalize(torch.from_numpy(np.array(images[i:i + 1])), "resnet50")[0]
        assert float((ours - x).abs().mean()) < 0.05


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


def test_feature_cache_only_without_augmentation():
    head = resolve("resnet50", "quick", "none", finetune="head", augment="none")
    assert features.uses_feature_cache(head, engine.Dist())
    assert not features.uses_feature_cache(resolve("resnet50", "quick", "none", finetune="head", augment="flips"),
                                         engine.Dist())
    assert not features.uses_feature_cache(resolve("resnet50", "quick", "none", finetune="last", augment="none"),
                                         engine.Dist())
    assert not features.uses_feature_cache(head, engine.Dist(0, 2))  # torchrun: the normal loop


def _fit(cfg, run_dir: Path, cache: Path):
    events: list[dict] = []
    run_dir.mkdir(parents=True)
    res = engine.fit(cfg, run_dir, events.append, cache_dir=cache, log=lambda s: None)
    return res, events, pd.read_csv(run_dir / filenames.PREDICTIONS), load_file(str(run_dir / filenames.CHECKPOINT))


@pytest.mark.parametrize("backbone", [name if name == "googlenet" else pytest.param(name, marks=[pytest.mark.integration, pytest.mark.bench])
                                      for name in backbones.BACKBONES])  # VGG16: 138 M parameters
def test_head_fast_path_trains_the_same_head_as_the_normal_loop(backbone, tiny_data, tmp_path, monkeypatch):
    # The frozen backbone is in eval mode in both paths (no dropout, fixed BatchNorm statistics), the
    # batches and their order come from the same seed, and the head sees the same inputs: in fp32 the
    # two paths differ only by the batch composition of the feature pass (rounding).
    cfg = resolve(backbone, "quick", "none", str(tiny_data), image_size=32, epochs=1, finetune="head",
                  augment="none", precision="fp32", batch_size=16)
    fast = _fit(cfg, tmp_path / "fast", tmp_path / "cache")
    monkeypatch.setattr(features, "uses_feature_cache", lambda c, d: False)
    normal = _fit(cfg, tmp_path / "normal", tmp_path / "cache")

    (fres, fev, fpred, fw), (nres, nev, npred, nw) = fast, normal
    assert fev[0]["feature_cache"] is True and nev[0]["feature_cache"] is False
    assert [(e["type"], e.get("epoch"), e.get("step")) for e in fev] == \
        [(e["type"], e.get("epoch"), e.get("step")) for e in nev]
    assert fpred["path"].tolist() == npred["path"].tolist()
    probs = [c for c in fpred.columns if c.startswith("prob_")]
    assert np.abs(fpred[probs].to_numpy() - npred[probs].to_numpy()).max() < 1e-4
    assert (fpred["pred"] == npred["pred"]).all()
    assert fw.keys() == nw.keys()
    assert max(float((fw[k].float() - nw[k].float()).abs().max()) for k in fw) < 1e-4
    assert fres["val_loss"] == pytest.approx(nres["val_loss"], abs=1e-4)
    fe = [e for e in fev if e["type"] == "epoch"][0]
    ne = [e for e in nev if e["type"] == "epoch"][0]
    assert fe["train_loss"] == pytest.approx(ne["train_loss"], abs=1e-4)
    # only the head changed: the checkpoint's backbone is the initial one (BatchNorm statistics included)
    torch.manual_seed(cfg.seed)
    start = backbones.build_model(backbone, 2, "none").state_dict()
    head = backbones.get_spec(backbone).head
    changed = [k for k in fw if not torch.equal(fw[k], start[k])]
    assert changed and all(k.startswith(head + ".") for k in changed)


@pytest.mark.integration
@pytest.mark.bench
def test_head_fast_path_in_bf16_keeps_the_predictions(tiny_data, tmp_path, monkeypatch):
    cfg = resolve("googlenet", "quick", "none", str(tiny_data), image_size=32, epochs=1, finetune="head",
                  augment="none", precision="bf16", batch_size=16)
    _, _, fpred, _ = _fit(cfg, tmp_path / "fast", tmp_path / "cache")
    monkeypatch.setattr(features, "uses_feature_cache", lambda c, d: False)
    _, _, npred, _ = _fit(cfg, tmp_path / "normal", tmp_path / "cache")
    probs = [c for c in fpred.columns if c.startswith("prob_")]
    assert np.abs(fpred[probs].to_numpy() - npred[probs].to_numpy()).max() < 2e-2  # bf16: 8 bits of mantissa
    assert (fpred["pred"] == npred["pred"]).mean() >= 0.95


@pytest.mark.integration
@pytest.mark.bench
def test_head_features_are_kept_for_the_next_run_and_reused_exactly(tiny_data, tmp_path):
    cfg = resolve("googlenet", "quick", "none", str(tiny_data), image_size=32, epochs=1, finetune="head",
                  augment="none", precision="fp32", batch_size=16)
    cache = tmp_path / "cache"

    def fit(c, name):
        logs: list[str] = []
        (tmp_path / name).mkdir()
        res = engine.fit(c, tmp_path / name, lambda e: None, cache_dir=cache, log=logs.append)
        return res, "\n".join(logs), load_file(str(tmp_path / name / filenames.CHECKPOINT))

    first, log1, w1 = fit(cfg, "a")
    files = list((cache / "features").glob("*.safetensors"))
    assert len(files) == 1 and "computed once" in log1
    # another head recipe on the same backbone, data and split: the features are read, not recomputed
    second, log2, _ = fit(replace(cfg, lr=cfg.lr * 3), "b")
    assert "read from the feature cache" in log2 and "computed once" not in log2
    same, log3, w3 = fit(cfg, "c")
    assert "read from the feature cache" in log3
    assert same["val_loss"] == first["val_loss"] and all(torch.equal(w1[k], w3[k]) for k in w1)
    # another seed is another (random) backbone: not the same features
    _, log4, _ = fit(replace(cfg, seed=cfg.seed + 1), "d")
    assert "computed once" in log4 and len(list((cache / "features").glob("*.safetensors"))) == 2
    # a damaged cache file is a miss, never a crash, and is replaced
    files[0].write_bytes(b"not safetensors")
    again, log5, _ = fit(cfg, "e")
    assert "computed once" in log5 and again["val_loss"] == first["val_loss"]


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
