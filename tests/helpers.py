"""Hand-made run folders and tiny models the dashboard, compare, prediction and runs tests share."""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from leukviz.core.storage import append_jsonl, atomic_write_json
from leukviz.models import backbones, config
from leukviz.runstore import runs
from leukviz.serving import inference


def make_run(root: Path, backbone: str = "googlenet", fingerprint: str = "fp1",
             state: str | None = "finished", split: str = "subject", data_spec: str = "demo",
             created: float | None = None, seed: int = 0, with_predictions: bool = True,
             **cfg_overrides) -> runs.Run:
    """A run folder written by hand, as the engine would leave it (no training)."""
    cfg = config.resolve(backbone, "quick", "none", data_spec, split=split, seed=seed, **cfg_overrides)
    run = runs.Run(root / cfg.identity(fingerprint))
    run.dir.mkdir(parents=True)
    atomic_write_json(run.dir / "config.json", {"run_id": run.run_id, "config": cfg.to_dict(),
                                                "dataset_fingerprint": fingerprint,
                                                "created": created if created is not None else time.time()})
    if state:
        atomic_write_json(run.dir / "status.json", {"state": state, "epoch": 2, "epochs": 3,
                                                    "updated": time.time(),
                                                    "error": "boom" if state == "failed" else None})
    if state is None:  # never started: no files beyond config.json
        return run
    append_jsonl(run.dir / "metrics.jsonl", {"type": "start", "epoch": 0, "epochs": 3, "steps_per_epoch": 4,
                                             "time": 100.0})
    for e in (1, 2):
        append_jsonl(run.dir / "metrics.jsonl", {
            "type": "epoch", "epoch": e, "epochs": 3, "train_loss": 0.5, "train_acc": 0.7, "val_loss": 0.4,
            "val_acc": 0.75, "val_f1": 0.7, "seconds": 10.0 * e, "time": 100.0 + 10 * e})
    if with_predictions:
        y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
        p_all = np.array([0.1, 0.6, 0.2, 0.9, 0.8, 0.4, 0.7, 0.95])
        pd.DataFrame({"path": [f"/x/{i}.png" for i in range(8)], "subject": ["H1"] * 3 + ["7"] * 5,
                      "label": y, "pred": (p_all > 0.5).astype(int), "prob_hem": 1 - p_all, "prob_all": p_all}
                     ).to_csv(run.dir / "val_predictions.csv", index=False)
        atomic_write_json(run.dir / "model.json", {
            "backbone": backbone, "classes": ["hem", "all"], "params": 5_600_000, "weights_init": "none",
            "positive": 1, "image_size": cfg.image_size, "crop": cfg.crop, "crop_window": 0.75,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "build_kwargs": {},
            "split": {"method": split, "description": "by subject: 1 of 3 subjects held out"},
            "metrics": {"val_acc": 0.75, "val_f1": 0.74, "best_epoch": 2}})
        (run.dir / "model.safetensors").write_bytes(fake_weights(backbone, 2, 2_000_000))
    return run


def fake_weights(backbone: str, n_classes: int, size: int) -> bytes:
    """A well-formed safetensors file of exactly `size` bytes whose classifier has n_classes outputs (the
    run-folder checks read its header; nothing loads it)."""
    import json
    import struct

    head = f"{backbones.get_spec(backbone).head}.weight"
    n_head, header_len = n_classes * 16 * 4, 256
    pad = size - 8 - header_len - n_head
    header = json.dumps({head: {"dtype": "F32", "shape": [n_classes, 16], "data_offsets": [0, n_head]},
                         "pad": {"dtype": "U8", "shape": [pad], "data_offsets": [n_head, n_head + pad]}})
    return struct.pack("<Q", header_len) + header.ljust(header_len).encode() + b"\0" * (n_head + pad)


class FakeProc:
    def __init__(self, returncode: int | None):
        self.returncode = returncode

    def poll(self) -> int | None:
        return self.returncode


_NET: list[torch.nn.Module] = []


def tiny_model(tmp_path: Path, size: int = 32, crop: bool = True, name: str = "m") -> inference.LoadedModel:
    """An untrained GoogLeNet (built once: its initialisation is slow) posing as a finished run's model."""
    if not _NET:
        torch.manual_seed(0)
        _NET.append(backbones.build_model("googlenet", 2, "none").eval())
    model = _NET[0]
    meta = {"backbone": "googlenet", "classes": ["hem", "all"], "image_size": size, "crop": crop}
    (tmp_path / name).mkdir(exist_ok=True)
    return inference.LoadedModel(model, meta, torch.device("cpu"), tmp_path / name)


def png_bytes(size: int = 48) -> bytes:
    a = np.zeros((size, size, 3), np.uint8)
    a[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (150, 90, 200)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


# The two small runs the dashboard tests share: GoogLeNet trained whole, ResNet50's last stage and head (cheap,
# and it learns; a head alone on random features is degenerate). VGG16 is left out: 138 M parameters.
APP_FINETUNE = {"googlenet": "full", "resnet50": "last"}


_BUILT: dict[str, torch.nn.Module] = {}


def fresh_model(name: str) -> torch.nn.Module:
    """A from-scratch model of a backbone with two classes, as build_model(name, 2, "none") gives it after
    torch.manual_seed(0): built once per session (VGG16's initialisation alone takes about a second) and
    handed out as a copy that a test may change freely."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = backbones.build_model(name, 2, "none")
    import copy

    return copy.deepcopy(_BUILT[name])


def tiny_config(backbone: str, dataset: Path, **overrides) -> config.RunConfig:
    """A run of the quick preset from scratch at 32 px, one epoch: seconds to train."""
    settings = {"epochs": 1, "image_size": 32, "batch_size": 64, "finetune": APP_FINETUNE.get(backbone, "full")}
    settings.update(overrides)
    return config.resolve(backbone, "quick", "none", str(dataset), **settings)


def link_run(run: runs.Run, root: Path, name: str | None = None) -> runs.Run:
    """A run's folder under root (as `name`, or its id) made of hard links, its lock files left out: cheap, and
    safe because files are replaced, never edited in place, by every writer but training itself (a test that
    damages a file replaces it; a test that trains makes a run of its own)."""
    dest = Path(root) / (name or run.run_id)
    shutil.copytree(run.dir, dest, copy_function=os.link, ignore=shutil.ignore_patterns("*.lock"))
    return runs.Run(dest)


def link_runs(found: Iterable[runs.Run], root: Path) -> list[runs.Run]:
    """The session's trained runs in a module's own home, without training them again (link_run)."""
    return [link_run(run, root) for run in found]
