"""What one run trains with (TrainState), shared by the loop (engine) and its hooks (callbacks, checkpoints,
features) without their importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from leukviz.datasets import data
from leukviz.models.backbones import BackboneSpec
from leukviz.models.config import RunConfig
from leukviz.training.distributed import Dist


@dataclass
class TrainState:
    """Everything one run trains with: the model and what updates it, the device, and the data tensors.

    `average` is the weight average (or None) and `scored` the model validated and kept (the average's
    module, else the model). `feats` holds the head's (train, val) inputs once the head-only fast path has
    them; then the head trains on feats[0] instead of the model on train_x. `spec` is the backbone's registry
    entry, resolved once when the state is made. The loop keeps where it is (epoch, step, steps, the epoch's
    running sums, the step's loss, the validated epoch's event and probabilities) on the state for its
    callbacks, which end the epoch or the run through stop_epoch and stop_fit.
    """

    cfg: RunConfig
    model: nn.Module
    train_model: nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    frozen: list[nn.Module]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    criterion: nn.Module
    amp: torch.dtype | None
    device: torch.device
    dist: Dist
    average: nn.Module | None
    scored: nn.Module
    spec: BackboneSpec
    fast_head: bool
    train_x: torch.Tensor
    train_y: torch.Tensor
    steps_per_epoch: int
    feats: tuple[torch.Tensor, torch.Tensor] | None = None
    # the dataset side, set by setup() (the benchmark trains on tensors alone)
    ds: data.Dataset | None = None
    split: data.Split | None = None
    train_rows: np.ndarray | None = None  # dataset rows of train_x, in order
    val_rows: np.ndarray | None = None
    val_x: np.ndarray | None = None  # small validation sets are read once into memory; else None
    images: np.ndarray | None = None
    val_y: np.ndarray | None = None
    # where training starts: the first epoch, or a resume point
    start_epoch: int = 1
    start_step: int = 0
    running: list[float] | None = None
    best: dict = field(default_factory=lambda: {"val_f1": -1.0, "epoch": 0})
    # where the loop is, for its callbacks (callbacks.py)
    epoch: int = 0
    step: int = 0
    steps: int = 0
    loss: float = float("nan")  # the last step's batch loss
    ev: dict | None = None  # the validated epoch's event
    probs: np.ndarray | None = None  # its validation probabilities
    stop_epoch: bool = False
    stop_fit: bool = False

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self.spec.head)

    def val_images(self) -> np.ndarray:
        return self.val_x if self.val_x is not None else self.images[self.val_rows]
