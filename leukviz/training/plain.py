"""The plain hand-written training loop, as a notebook writes it: the baseline studies compare leukviz against.

torchvision's file loading and transforms (the whole image resized, random flips), decoded at every access,
Adam at 1e-3, fp32, no class weighting, no schedule, no averaging; the model of the last epoch is scored.
The benchmark times this same loop (train_loader, optimizer, train_step). Its results are cached as JSON (it is slow: every epoch decodes every image again), keyed by everything
they depend on, so a study that is run again only trains what is new.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from leukviz.core.storage import atomic_write_bytes
from leukviz.models import backbones
from leukviz.models.config import weights_digest
from leukviz.scoring.metrics import weighted_f1

PLAIN_VERSION = 1
RECIPE = {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "augment": "horizontal and vertical flips",
          "precision": "fp32", "input": "whole image resized (torchvision Resize)", "select": "last epoch"}


class _Files:
    """(path, label) pairs read with torchvision's default loader and a transform: ImageFolder without the
    folder walk, so that the study's folds can name the files."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], transform):
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from torchvision.datasets.folder import default_loader

        return self.transform(default_loader(self.paths[i])), self.labels[i]


Files = tuple[Sequence[str], Sequence[int]]  # (paths, labels)


@dataclass(frozen=True)
class PlainRun:
    """What one plain-loop run is, besides its files (the recipe is fixed: RECIPE)."""

    backbone: str
    weights: str
    image_size: int
    epochs: int
    seed: int


def cache_key(run: PlainRun, fingerprint: str, train: Sequence[str], val: Sequence[str]) -> str:
    # a weights file is known by its bytes, as a run's is (replacing the file is another run)
    weights = run.weights if run.weights in ("none", "imagenet") else f"file:{weights_digest(run.weights)}"
    h = hashlib.sha256(json.dumps({"version": PLAIN_VERSION, "recipe": RECIPE, "backbone": run.backbone,
                                   "weights": weights, "dataset": fingerprint, "image_size": run.image_size,
                                   "epochs": run.epochs, "seed": run.seed}, sort_keys=True).encode())
    for part in (sorted(train), sorted(val)):
        h.update("\n".join(Path(p).name for p in part).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


def transforms(backbone: str, image_size: int, train: bool):
    """torchvision's usual transforms: the whole image resized, random flips when training, the backbone's
    normalisation."""
    from torchvision import transforms as T

    spec = backbones.get_spec(backbone)
    flips = [T.RandomHorizontalFlip(), T.RandomVerticalFlip()] if train else []
    return T.Compose([T.Resize((image_size, image_size)), *flips, T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def train_loader(files: Files, backbone: str, image_size: int, seed: int, batch_size: int = RECIPE["batch_size"],
                 workers: int = 0, pin_memory: bool = False):
    """The training batches, shuffled by `seed`, decoded at every access. The benchmark times this loop with
    its own batch size and DataLoader workers; the recipe's are the defaults."""
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed)
    return DataLoader(_Files(*files, transforms(backbone, image_size, True)), batch_size=batch_size, shuffle=True,
                      generator=g, num_workers=workers, pin_memory=pin_memory)


def optimizer(model):
    """The recipe's optimizer over the parameters that train."""
    import torch

    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=RECIPE["lr"])


def train_step(model, opt, crit, x, y, device=None) -> None:
    """One step of the plain loop: fp32, the default memory format, on `device` when given (the benchmark)."""
    if device is not None:
        nb = device.type == "cuda"
        x, y = x.to(device, non_blocking=nb), y.to(device, non_blocking=nb)
    loss = crit(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def fit(run: PlainRun, train: Files, val: Files, log: Callable[[str], None] = print) -> dict:
    """Train the plain loop; returns each epoch's validation scores and the last epoch's probabilities."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    backbone, image_size, epochs, seed = run.backbone, run.image_size, run.epochs, run.seed
    torch.manual_seed(seed)
    model = backbones.build_model(backbone, 2, run.weights)
    loader = train_loader(train, backbone, image_size, seed)
    val_loader = DataLoader(_Files(*val, transforms(backbone, image_size, False)), batch_size=64)
    opt = optimizer(model)
    crit = nn.CrossEntropyLoss()
    y_val = np.asarray(val[1])
    history, probs = [], np.zeros((0, 2))
    for epoch in range(1, epochs + 1):
        t0 = time.time()
        model.train()
        for x, y in loader:
            train_step(model, opt, crit, x, y)
        model.eval()
        out = []
        with torch.no_grad():
            for x, _ in val_loader:
                out.append(torch.softmax(model(x), dim=1).numpy())
        probs = np.concatenate(out)
        pred = probs.argmax(1)
        history.append({"epoch": epoch, "val_f1": weighted_f1(y_val, pred), "val_acc": float((pred == y_val).mean()),
                        "seconds": time.time() - t0})
        log(f"plain {backbone} seed {seed} epoch {epoch}/{epochs}: val F1 {history[-1]['val_f1']:.3f} "
            f"({history[-1]['seconds']:.0f}s)")
    return {"epochs": history, "probs": probs.tolist()}


def cached_fit(cache_dir: Path, run: PlainRun, fingerprint: str, train: Files, val: Files,
               log: Callable[[str], None] = print) -> dict:
    """fit, or its cached result (a damaged cache file is trained again)."""
    key = cache_key(run, fingerprint, train[0], val[0])
    path = Path(cache_dir) / "plain" / f"{key}.json"
    names = [Path(p).name for p in val[0]]
    try:
        res = json.loads(path.read_text())
        if (len(res["probs"]) == len(val[0]) and len(res["epochs"]) == run.epochs
                and res.get("val_files", names) == names):  # the probabilities are of these cells, in this order
            log(f"plain {run.backbone} seed {run.seed}: cached")
            return res
    except (OSError, ValueError, KeyError, TypeError):
        pass
    res = {**fit(run, train, val, log), "val_files": names}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(res).encode())
    return res
