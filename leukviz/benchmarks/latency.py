"""Prediction latency: one image file through the CLI's predict path, each model in turn, p50 and p95 warm."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from leukviz.benchmarks.settings import BenchConfig, Log, _sync
from leukviz.datasets import cnmc, data


def predict_latency(bc: BenchConfig, image_path: str, device: torch.device, reps: int, log: Log,
                    built: dict[str, nn.Module]) -> dict:
    """One image file through leukviz.inference.predict_files (decode, preprocessing, forward: the CLI's
    predict path, each model decoding the file itself), through all models in turn and each model's share of
    that loop; p50 and p95 over warm repetitions. (The Predict page decodes once for all models:
    prediction.predict_images.)"""
    from leukviz.serving import inference

    models = {}
    for name in bc.backbones:  # copies of the benchmark's models (building VGG16 again takes seconds)
        m = copy.deepcopy(built[name]).to(device, memory_format=torch.channels_last).eval()
        meta = {"backbone": name, "classes": list(cnmc.CNMC_CLASSES), "image_size": bc.image_size, "crop": True,
                "crop_window": data.CELL_WINDOW}
        models[name] = inference.LoadedModel(m, meta, device, Path(f"bench-{name}"))
    out: dict = {}

    names = list(bc.backbones)
    for _ in range(3):  # warm: kernels created, memory allocated
        for nm in names:
            inference.predict_files(models[nm], [image_path])
    times: dict[str, list[float]] = {nm: [] for nm in names}
    for _ in range(reps):  # all models in turn, as the Predict page does; each one's time kept too
        for nm in names:
            _sync(device)
            t = time.perf_counter()
            inference.predict_files(models[nm], [image_path])
            _sync(device)
            times[nm].append(time.perf_counter() - t)

    def summary(ts: list[float]) -> dict:
        return {"p50_ms": float(np.percentile(ts, 50) * 1e3), "p95_ms": float(np.percentile(ts, 95) * 1e3),
                "reps": reps}

    for nm in names:
        out[nm] = summary(times[nm])
        log(f"  predict latency {nm}: p50 {out[nm]['p50_ms']:.1f} ms, p95 {out[nm]['p95_ms']:.1f} ms")
    out["all"] = summary([sum(ts) for ts in zip(*times.values())])
    log(f"  predict latency, all {len(names)}: p50 {out['all']['p50_ms']:.1f} ms, p95 {out['all']['p95_ms']:.1f} ms")
    return out
