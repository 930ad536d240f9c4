"""Timing the training paths on the same images from the same initial weights: the plain loop (training/plain.py,
the one the studies train), leukviz's loop (engine.train_one_epoch, set up as a run is), the head-only fast
path, and the ablation that adds leukviz's speed-ups one at a time."""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from leukviz.benchmarks import roofline
from leukviz.benchmarks.benchdata import BenchData, plain_loader
from leukviz.benchmarks.settings import HEAD_EPOCHS, BenchConfig, Log, _sync, precision_name, run_config
from leukviz.models import backbones, devices
from leukviz.models.config import RunConfig
from leukviz.training import engine, features, plain


def build(cfg: RunConfig, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return backbones.build_model(cfg.backbone, 2, cfg.weights)


def _endless(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def time_plain(model: nn.Module, cfg: RunConfig, loader, device: torch.device, warmup: int,
               timed: int | None, min_seconds: float = 0.0) -> dict:
    """The plain loop of training/plain.py (the one the studies train: fp32, default memory format, decode
    every batch, its recipe's optimizer) at cfg's fine-tuning depth. Times at least `timed` batches after
    `warmup`, and more until min_seconds have passed (None: one whole fresh epoch, worker start-up included,
    as every epoch of this loop pays it)."""
    model = model.to(device)
    backbones.set_finetune(model, cfg.backbone, cfg.finetune)
    model.train()
    opt, crit = plain.optimizer(model), nn.CrossEntropyLoss()

    def step(x, y):
        plain.train_step(model, opt, crit, x, y, device)

    batches = _endless(loader)
    for _ in range(warmup):
        step(*next(batches))
    if timed is None:
        batches.close()  # its DataLoader workers stop before the timed epoch starts its own
    _sync(device)
    images = 0
    t = time.perf_counter()
    if timed is None:
        for x, y in loader:
            step(x, y)
            images += len(y)
    else:
        done = 0
        while done < timed or time.perf_counter() - t < min_seconds:
            x, y = next(batches)
            step(x, y)
            images += len(y)
            done += 1
    _sync(device)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "images": images, "images_per_s": images / seconds}


class _NCHW(nn.Module):
    """The channels-last ablation's model: its input made NCHW-contiguous before the (NCHW) model runs.
    Holds the model as .module, so the loop's weight average reads the model itself (distributed.unwrap)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.contiguous())


def time_leukviz(model: nn.Module, cfg: RunConfig, train_x: torch.Tensor, train_y: torch.Tensor,
                 device: torch.device, warmup: int, timed: int | None, channels_last: bool = True,
                 min_seconds: float = 0.0) -> dict:
    """engine.train_one_epoch on the cached uint8 images, set up as a run is (engine.setup_training; the
    allocator tuning engine.setup also does is process-wide: run() applies it once, after the plain loop).
    channels_last=False (the ablation only): model and inputs in the default NCHW memory format."""
    d = engine.Dist()
    n = len(train_x)
    epoch1 = engine.epoch_batches(n, cfg.batch_size, cfg.seed, 1, d)
    state = engine.setup_training(cfg, model, train_x, train_y, 2, device, d, len(epoch1) * 3)
    if not channels_last:  # the ablation: the same state, its model and inputs in NCHW
        for m in (state.model, state.average):
            if m is not None:
                m.to(memory_format=torch.contiguous_format)  # in place: the optimizer keeps its parameters
        state.train_model = _NCHW(state.model)
    engine.set_train_mode(state.train_model, state.frozen, cfg.freeze_bn)
    warm = [epoch1[i % len(epoch1)] for i in range(warmup)]
    engine.train_one_epoch(state, warm, 1)
    batches = engine.epoch_batches(n, cfg.batch_size, cfg.seed, 2, d)
    _sync(device)
    t = time.perf_counter()
    if timed is None:  # one whole epoch
        engine.train_one_epoch(state, batches, 1)
        images = int(sum(len(b) for b in batches))
    else:  # at least `timed` batches, and more until min_seconds have passed
        images = done = 0
        while done < timed or time.perf_counter() - t < min_seconds:
            b = batches[done % len(batches)]
            engine.train_one_epoch(state, [b], 1)
            images += len(b)
            done += 1
    _sync(device)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "images": images, "images_per_s": images / seconds,
            "precision": precision_name(state.amp)}


def time_head_fast(model: nn.Module, cfg: RunConfig, images: np.ndarray, train_y: torch.Tensor,
                   device: torch.device, part_size: int | None) -> dict:
    """The head-only fast path as a run takes it: features once (features.head_features), then
    HEAD_EPOCHS epochs of the head on them (engine.train_one_epoch). part_size (quick): the feature pass is
    timed on that many images and extrapolated to all; the head epochs always run in full."""
    d = engine.Dist()
    n = len(images)
    steps = len(engine.epoch_batches(n, cfg.batch_size, cfg.seed, 1, d))
    state = engine.setup_training(cfg, model, torch.from_numpy(np.ascontiguousarray(images)), train_y, 2, device,
                                  d, steps * HEAD_EPOCHS)
    model, head, amp = state.model, state.spec.head, state.amp
    fb = features.feature_batch_size(cfg.image_size)
    part = images[:min(n, part_size)] if part_size else images
    if part_size:  # the first batch creates the kernels: one small warm-up so one timed batch is representative
        features.head_features(model, head, images[:2], cfg.backbone, device, amp, fb)
    _sync(device)
    t = time.perf_counter()
    feats = features.head_features(model, head, part, cfg.backbone, device, amp, fb)
    _sync(device)
    feature_seconds = (time.perf_counter() - t) * (n / len(part))
    if len(part) < n:  # the head epochs need features of every image: repeat the measured ones
        feats = feats.repeat((n + len(part) - 1) // len(part), 1)[:n]
    state.feats = (feats, feats[:0])  # the head trains on feats[0]; nothing is validated here
    engine.set_train_mode(model, state.frozen, cfg.freeze_bn)
    t = time.perf_counter()
    for epoch in range(1, HEAD_EPOCHS + 1):
        batches = engine.epoch_batches(n, cfg.batch_size, cfg.seed, epoch, d)
        engine.train_one_epoch(state, batches, epoch)
    _sync(device)
    head_seconds = time.perf_counter() - t
    return {"feature_seconds": feature_seconds, "head_epochs_seconds": head_seconds,
            "feature_dim": int(feats.shape[1]), "feature_dtype": str(feats.dtype).replace("torch.", ""),
            "feature_batch": fb, "extrapolated": len(part) < n}


def _best_plain(results: dict[int, dict]) -> tuple[int, dict]:
    w = max(results, key=lambda k: results[k]["images_per_s"])
    return w, results[w]


def bench_plain(bc: BenchConfig, name: str, bd: BenchData, init: nn.Module, device: torch.device, log: Log) -> dict:
    """The plain loop's paths for one backbone: full fine-tuning, last stage (full runs) and head only."""
    out: dict = {}

    def plain(cfg: RunConfig) -> dict:
        res = {}
        for w in bc.workers:
            loader = plain_loader(bd, bc.image_size, name, bc.batch, w, bc.seed, device)
            res[w] = time_plain(copy.deepcopy(init), cfg, loader, device, bc.warmup_plain, bc.timed_plain,
                                bc.min_seconds_plain)
            log(f"  {name} plain {cfg.finetune} (num_workers={w}): {res[w]['images_per_s']:.1f} img/s")
        w, best = _best_plain(res)
        return {**best, "num_workers": w, "by_workers": {str(k): v["images_per_s"] for k, v in res.items()}}

    out["plain_full"] = plain(run_config(bc, name, "full"))
    if not bc.quick:  # last stage: skipped by --quick to keep it under a minute
        out["plain_last"] = plain(run_config(bc, name, "last"))
    out["plain_head"] = plain(run_config(bc, name, "head", augment="none"))
    out["plain_head"]["run_seconds"] = HEAD_EPOCHS * bd.n / out["plain_head"]["images_per_s"]
    return out


def bench_leukviz(bc: BenchConfig, name: str, bd: BenchData, images: np.ndarray, init: nn.Module,
                  device: torch.device, cache_seconds: float, out: dict, log: Log) -> dict:
    """leukviz's paths for one backbone, from the same initial weights as the plain loop; `out` holds the
    plain loop's results and gets the rest."""
    cfg_full = run_config(bc, name, "full")
    n = bd.n
    train_y = torch.as_tensor(bd.labels)
    train_x = torch.from_numpy(np.ascontiguousarray(images))
    out.update({"n_images": n, "steps_per_epoch": (n + bc.batch - 1) // bc.batch})
    wl, tl, ml = bc.warmup_leukviz, bc.timed_leukviz, bc.min_seconds_leukviz

    out["leukviz_full"] = time_leukviz(copy.deepcopy(init), cfg_full, train_x, train_y, device, wl, tl,
                                       min_seconds=ml)
    log(f"  {name} leukviz full ({out['leukviz_full']['precision']}): "
        f"{out['leukviz_full']['images_per_s']:.1f} img/s")
    out["speedup_full_vs_plain"] = out["leukviz_full"]["images_per_s"] / out["plain_full"]["images_per_s"]
    flops = roofline.train_step_flops(init, cfg_full, device)
    out["train_gflop_per_image"] = flops / 1e9
    out["gflops_full"] = flops * out["leukviz_full"]["images_per_s"] / 1e9
    out["gflops_plain"] = flops * out["plain_full"]["images_per_s"] / 1e9

    if "plain_last" in out:
        cfg_last = run_config(bc, name, "last")
        out["leukviz_last"] = time_leukviz(copy.deepcopy(init), cfg_last, train_x, train_y, device, wl, tl,
                                           min_seconds=ml)
        log(f"  {name} leukviz last stage: {out['leukviz_last']['images_per_s']:.1f} img/s")
        out["speedup_last_vs_plain"] = out["leukviz_last"]["images_per_s"] / out["plain_last"]["images_per_s"]

    # head only over HEAD_EPOCHS epochs, the first counted: plain epochs all cost the same
    cfg_head = run_config(bc, name, "head", augment="none")
    plain_head = out["plain_head"]
    fast = time_head_fast(copy.deepcopy(init), cfg_head, images, train_y, device, bc.feature_part)
    fast["run_seconds_warm_cache"] = fast["feature_seconds"] + fast["head_epochs_seconds"]
    fast["run_seconds"] = cache_seconds + fast["run_seconds_warm_cache"]
    fast["cache_seconds"] = cache_seconds
    out["leukviz_head"] = fast
    out["speedup_head_vs_plain"] = plain_head["run_seconds"] / fast["run_seconds"]
    out["speedup_head_vs_plain_warm_cache"] = plain_head["run_seconds"] / fast["run_seconds_warm_cache"]
    out["speedup_head_vs_plain_warm_features"] = plain_head["run_seconds"] / fast["head_epochs_seconds"]
    log(f"  {name} head only, {HEAD_EPOCHS} epochs: plain {plain_head['run_seconds']:.1f}s, leukviz "
        f"{fast['run_seconds']:.2f}s (image cache {cache_seconds:.2f}s + features {fast['feature_seconds']:.2f}s + "
        f"head {fast['head_epochs_seconds']:.2f}s) -> {out['speedup_head_vs_plain']:.1f}x")
    return out


ABLATION_STEPS = (("cached uint8 images, fp32, NCHW", "fp32", False),
                  ("+ channels-last", "fp32", True),
                  ("+ bf16 autocast", None, True))  # None: the run's own precision


ABLATION_ALLOCATOR = "+ allocator keeps freed memory"


ABLATION_FREEZE_BN = "+ frozen BatchNorm statistics (option)"


def ablations(bc: BenchConfig, images: np.ndarray, labels: np.ndarray, inits: dict[str, nn.Module],
              device: torch.device, log: Log) -> dict[str, list[dict]]:
    """leukviz's full fine-tuning with its speed-ups added one at a time, per backbone (the decode-once cache
    is in every row; the plain loop is the row before them). The allocator tuning is process-wide and cannot
    be undone, so every backbone's other rows are measured before it is switched on for the last row."""
    train_x, train_y = torch.from_numpy(np.ascontiguousarray(images)), torch.as_tensor(labels)
    rows: dict[str, list[dict]] = {name: [] for name in inits}

    def measure(name: str, label: str, precision: str | None, channels_last: bool,
                freeze_bn: bool = False) -> None:
        cfg = run_config(bc, name, "full")
        cfg = replace(cfg, precision=precision or cfg.precision, freeze_bn=freeze_bn)
        r = time_leukviz(copy.deepcopy(inits[name]), cfg, train_x, train_y,
                         device, bc.warmup_leukviz, bc.timed_leukviz, channels_last=channels_last,
                         min_seconds=bc.min_seconds_leukviz)
        log(f"  {name} ablation, {label}: {r['images_per_s']:.1f} img/s ({r['precision']})")
        rows[name].append({"step": label, **r})

    for name in inits:
        for label, precision, cl in ABLATION_STEPS:
            measure(name, label, precision, cl)
    if device.type == "cpu" and devices.tune_cpu_allocator():
        for name in inits:
            measure(name, ABLATION_ALLOCATOR, None, True)
    for name, init in inits.items():  # not a default: BatchNorm in eval mode changes what training does
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in init.modules()):
            measure(name, ABLATION_FREEZE_BN, None, True, freeze_bn=True)
    return rows
