"""What updates the weights: the optimizer, the rate's schedule, the class weights of the loss, and the weight
average (EMA) a run may validate and keep instead of the raw weights."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from leukviz.models.config import RunConfig


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """The run's optimizer. Fused (one pass over each tensor instead of one per arithmetic step) on CPU and
    CUDA: on CPU PyTorch's default is a Python loop of separate kernels, and the update is memory-bound, so
    for AdamW the fused form is several times faster (see docs/BENCHMARKS.md). params: the parameters (those
    that train), or parameter groups with their own rates (finetune="staged", all of them)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        first = next((p for g in params for p in g["params"]), None)
    else:
        params = [p for p in params if p.requires_grad]
        first = params[0] if params else None
    fused = {"fused": True} if first is not None and first.device.type in ("cpu", "cuda") else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def make_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer, total_steps: int, head_steps: int = 0):
    """Cosine decay to 1 % of the rate, or none. finetune="staged" (head_steps > 0): the head-only steps at
    the full rate, then the cosine over the rest, each group's own rate scaled alike (LambdaLR)."""
    if cfg.finetune == "staged":
        rest = max(1, total_steps - head_steps)

        def factor(step: int) -> float:
            if cfg.scheduler != "cosine" or step < head_steps:
                return 1.0
            t = min(1.0, (step - head_steps) / rest)
            return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps), eta_min=cfg.lr * 0.01)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (sklearn's 'balanced'): each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = len(labels) / (n_classes * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)


# Weight averaging: the decay rises with the number of updates (the first steps of a short run are not
# averaged in for long) up to EMA_DECAY.
EMA_DECAY = 0.998


def _ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
    """AveragedModel's multi_avg_fn: exponential moving average of floats; integer buffers are copied."""
    if not averaged[0].is_floating_point():
        torch._foreach_copy_(averaged, current)
        return
    n = float(n_averaged)
    decay = min(EMA_DECAY, (1.0 + n) / (10.0 + n))
    torch._foreach_lerp_(averaged, current, 1.0 - decay)


def make_average(cfg: RunConfig, model: nn.Module) -> nn.Module | None:
    """The weight average a run validates and keeps (torch.optim.swa_utils.AveragedModel), or None. Its
    buffers (BatchNorm statistics) are averaged too, so it needs no extra pass over the data.

    Not for head-only fine-tuning: there the trained part is one linear layer on fixed features (no swings to
    smooth), and both of its paths (cached features, or the backbone at every step) must train the same head.
    """
    if cfg.average != "ema" or cfg.finetune == "head":
        return None
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(model, multi_avg_fn=_ema_update, use_buffers=True)
