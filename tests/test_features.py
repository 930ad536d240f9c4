"""The head-only fast path (training/features.py): it trains the same head as the normal loop, in fp32 and bf16;
its features are kept for the next run and reused exactly; a damaged cache file is a miss, never a crash."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from leukviz.core import filenames
from leukviz.models import backbones
from leukviz.models.config import resolve
from leukviz.training import engine, features


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


@pytest.mark.parametrize("backbone", [name if name == "googlenet" else pytest.param(name, marks=pytest.mark.integration)
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


@pytest.mark.integration  # in the full suite (CI); the development loop keeps the fp32 test above
def test_head_fast_path_in_bf16_keeps_the_predictions(tiny_data, tmp_path, monkeypatch):
    cfg = resolve("googlenet", "quick", "none", str(tiny_data), image_size=32, epochs=1, finetune="head",
                  augment="none", precision="bf16", batch_size=16)
    _, _, fpred, _ = _fit(cfg, tmp_path / "fast", tmp_path / "cache")
    monkeypatch.setattr(features, "uses_feature_cache", lambda c, d: False)
    _, _, npred, _ = _fit(cfg, tmp_path / "normal", tmp_path / "cache")
    probs = [c for c in fpred.columns if c.startswith("prob_")]
    assert np.abs(fpred[probs].to_numpy() - npred[probs].to_numpy()).max() < 2e-2  # bf16: 8 bits of mantissa
    assert (fpred["pred"] == npred["pred"]).mean() >= 0.95


@pytest.mark.integration  # five short runs: in the full suite (CI), out of the development loop
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
