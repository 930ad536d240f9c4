"""Roofline: FLOPs of a training step (counted by FlopCounterMode) and this machine's measured matmul peak, so a
path's images per second become a fraction of what the hardware gives."""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from leukviz.benchmarks.settings import _sync
from leukviz.models import backbones
from leukviz.models.config import RunConfig


def train_step_flops(model: nn.Module, cfg: RunConfig, device: torch.device, batch: int = 2) -> float:
    """FLOPs per image of a training step (forward and backward), counted by FlopCounterMode on a small
    batch (the count is linear in the batch size: every counted operation is per image)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).to(device, memory_format=torch.channels_last)
    backbones.set_finetune(model, cfg.backbone, cfg.finetune)
    model.train()
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y).backward()
    return counter.get_total_flops() / batch


def matmul_peak(dtype: torch.dtype, device: torch.device, sizes: tuple[int, ...] = (1024, 2048, 4096),
                reps: int = 5) -> float:
    """Best GFLOP/s of large square torch.mm products in this dtype, warm, over a few sizes (what the
    hardware gives matrix products; the best, so the fractions of it are not flattered)."""
    return max(_matmul_gflops(dtype, device, n, reps) for n in sizes)


def _matmul_gflops(dtype: torch.dtype, device: torch.device, n: int, reps: int) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9
