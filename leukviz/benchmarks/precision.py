"""The precision study (`bench --accuracy`): the same run trained in fp32 and bf16 over seeds: does bf16 cost
accuracy beyond the seed-to-seed noise?"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from leukviz.benchmarks.settings import Log
from leukviz.models.config import resolve
from leukviz.training import engine


def precision_accuracy(backbone: str = "googlenet", image_size: int = 64, epochs: int = 3,
                       seeds: tuple[int, ...] = (0, 1), precisions: tuple[str, ...] = ("fp32", "bf16"),
                       data_spec: str = "demo", cache_dir: Path | None = None, log: Log = print,
                       **overrides) -> list[dict]:
    """Train the same run from scratch in each precision (and seed) on the demo and report validation
    accuracy and F1: does bf16 cost accuracy beyond the seed-to-seed noise?"""
    rows = []
    for seed in seeds:
        for prec in precisions:
            cfg = resolve(backbone, "quick", "none", data_spec, image_size=image_size, epochs=epochs,
                          precision=prec, seed=seed, **overrides)
            with tempfile.TemporaryDirectory(prefix="leukviz-bench-acc-") as tmp:
                t = time.time()
                res = engine.fit(cfg, Path(tmp), lambda e: None, cache_dir=cache_dir, log=lambda s: None)
            rows.append({"backbone": backbone, "precision": prec, "seed": seed, "seconds": time.time() - t,
                         **{k: res[k] for k in ("val_acc", "val_f1", "val_loss", "best_epoch")}})
            log(f"  {backbone} {image_size}px {epochs} epochs seed {seed} {prec}: val acc {res['val_acc']:.4f} "
                f"F1 {res['val_f1']:.4f} ({rows[-1]['seconds']:.0f}s)")
    return rows
