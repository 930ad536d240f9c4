"""Several processes under torchrun: the process group, which process this is, a stop every process takes at
the same step, and one set of BatchNorm statistics."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from leukviz.core import paths
from leukviz.models.devices import pick_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


def init_distributed(device_pref: str = "auto") -> tuple[Dist, torch.device]:
    """Join the process group torchrun set up (if any); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), pick_device(device_pref)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(device_pref)
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        import datetime
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=paths.dist_timeout()))
    return Dist(rank, world, local), device


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def stop_requested(stop: bool, d: Dist) -> bool:
    """A stop asked of any process stops all of them at the same step."""
    if d.on:
        flag = torch.tensor([1.0 if stop else 0.0])
        dist.all_reduce(flag)
        stop = bool(flag.item() > 0)
    return stop


def share_buffers(d: Dist, modules: list[nn.Module]) -> None:
    """BatchNorm statistics are per process: take rank 0's, so every rank holds the same model."""
    if d.on:
        for buf in [b for m in modules for b in m.buffers()]:
            dist.broadcast(buf, 0)
