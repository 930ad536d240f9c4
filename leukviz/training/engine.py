"""The training loop: fit, train_one_epoch, evaluate. It announces named events and knows nothing of any UI."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from leukviz.core import events
from leukviz.core.errors import LeukvizError
from leukviz.core.layout import (
    CHECKPOINT,
    CONFIG,
    FEATURE_CACHE,
    PREDICTIONS,
    RESUME,
    SIDECAR,
    TEST_PREDICTIONS,
)
from leukviz.core.storage import atomic_torch_save, atomic_write_bytes, atomic_write_files, json_bytes
from leukviz.datasets import data
from leukviz.models import backbones, preprocess
from leukviz.models.augmentation import augment, draw_jitter
from leukviz.models.config import PREPROCESS_VERSION, RunConfig
from leukviz.models.devices import autocast, autocast_dtype, device_name, pick_device, tune_cpu_allocator
from leukviz.scoring import predictions
from leukviz.scoring.metrics import weighted_f1

Emit = Callable[[dict], None]


class Stopped(Exception):
    """Raised between batches when a stop was requested; the resumable state is already saved."""


class TrainingDiverged(LeukvizError, RuntimeError):
    """The loss became NaN or infinite."""


class OutOfMemory(LeukvizError, RuntimeError):
    """The device ran out of memory; the message names the batch size that was tried and a smaller one."""


class CheckpointError(LeukvizError, ValueError):
    """A resumable state that cannot be loaded without running code from it, or that is damaged."""


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA raises torch.cuda.OutOfMemoryError; MPS and the CPU allocator raise a RuntimeError saying so."""
    text = str(e)
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "not enough memory" in text))


def out_of_memory_message(cfg: RunConfig, error: BaseException, world: int = 1) -> str:
    per_process = max(1, cfg.batch_size // world)
    text = str(error)
    if isinstance(error, torch.cuda.OutOfMemoryError) or "CUDA" in text:
        where = "GPU memory"
    elif "MPS" in text:
        where = "Apple GPU (MPS) memory"
    else:
        where = "memory"
    if cfg.batch_size > 1:
        hint = (f"Start it again with batch size {cfg.batch_size // 2} (--batch-size {cfg.batch_size // 2}), "
                f"or a smaller image size.")
    else:
        hint = "Use a smaller image size, another backbone or a device with more memory."
    return (f"ran out of {where} with batch size {cfg.batch_size}"
            + (f" ({per_process} per process)" if world > 1 else "")
            + f" at {cfg.image_size} px on {cfg.backbone}. {hint}")


def load_resume_state(path: Path) -> dict:
    """Read the resumable state (layout.RESUME) with weights_only=True: tensors and plain values load; a pickle that runs code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only refusals and damaged files both land here
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise CheckpointError(f"refusing to resume from {Path(path).name}: not a plain tensor file "
                              f"({first}). Delete it to start the run over.") from None


# ---------------------------------------------------------------------------------------------- setup

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
                                timeout=datetime.timedelta(seconds=int(os.environ.get("LEUKVIZ_DIST_TIMEOUT", 600))))
    return Dist(rank, world, local), device


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


# ---------------------------------------------------------------------------------------------- batches

def epoch_augment_tables(cfg: RunConfig, epoch: int, n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Augmentation draws for every sample of an epoch, from (seed, epoch) alone: the same whatever the
    number of processes, and the same after a resume."""
    if cfg.augment == "none":
        return None, None
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    codes = torch.randint(0, 8, (n,), generator=g)
    jitter = draw_jitter(n, g) if cfg.augment == "full" else None
    return codes, jitter


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


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, d: Dist) -> list[np.ndarray]:
    """This process's batches for one epoch. Uses DistributedSampler in every case, so one process and N
    processes see the same global batches (rank r takes every W-th sample of the shuffled order)."""
    sampler = DistributedSampler(range(n), num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    idx = np.fromiter(iter(sampler), dtype=np.int64)
    per_rank = max(1, batch_size // d.world)
    batches = [idx[i:i + per_rank] for i in range(0, len(idx), per_rank)]
    if len(batches) > 1 and len(batches[-1]) == 1:  # batch norm cannot train on one image: merged into the one before
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def to_input(x_uint8: torch.Tensor, backbone: str, device: torch.device) -> torch.Tensor:
    non_blocking = device.type == "cuda"
    if non_blocking:
        x_uint8 = x_uint8.pin_memory()
    return preprocess.normalize(x_uint8.to(device, non_blocking=non_blocking), backbone)


# ---------------------------------------------------------------------------------------------- set-up

def _ignore(event: dict) -> None:
    """The emit of processes other than rank 0 (one metrics stream per run)."""


def _never() -> bool:
    return False


@dataclass
class Hooks:
    """What the loop tells its caller and asks it: events out, a stop request in, and where a stop saves."""

    emit: Emit = _ignore
    should_stop: Callable[[], bool] = _never
    save_resume: Callable[[int, list[float]], None] | None = None


@dataclass
class TrainState:
    """Everything one run trains with: the model and what updates it, the device, and the data tensors.

    `average` is the weight average (or None) and `scored` the model validated and kept (the average's
    module, else the model). `feats` holds the head's (train, val) inputs once the head-only fast path has
    them; then the head trains on feats[0] instead of the model on train_x. `prepare` replaces the training
    preprocessing (to_input) when set (the benchmark's NCHW ablation).
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
    head_name: str
    fast_head: bool
    train_x: torch.Tensor
    train_y: torch.Tensor
    steps_per_epoch: int
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
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

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self.head_name)

    def val_images(self) -> np.ndarray:
        return self.val_x if self.val_x is not None else self.images[self.val_rows]


def setup_training(cfg: RunConfig, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, n_classes: int,
                   device: torch.device, d: Dist | None = None, total_steps: int | None = None,
                   channels_last: bool = True) -> TrainState:
    """What a run trains with, around a built model: frozen layers, the device (channels-last), loss,
    optimizer, schedule, autocast, gradient scaler, weight average, DDP. The benchmark uses it as is.
    total_steps: the schedule's length (default: the run's epochs)."""
    d = d or Dist()
    frozen = backbones.set_finetune(model, cfg.backbone, cfg.finetune)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    weights = class_weights(train_y.numpy(), n_classes) if cfg.class_balance == "weighted_loss" else None
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))
    staged = cfg.finetune == "staged"
    opt = make_optimizer(cfg, backbones.param_groups(model, cfg.backbone, cfg.lr) if staged else model.parameters())
    steps_per_epoch = len(epoch_batches(len(train_x), cfg.batch_size, cfg.seed, 1, d))
    sched = make_scheduler(cfg, opt, steps_per_epoch * cfg.epochs if total_steps is None else total_steps,
                           steps_per_epoch * cfg.head_epochs if staged else 0)
    amp = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 and device.type == "cuda" else None
    average = make_average(cfg, model)
    return TrainState(cfg, model, wrap(model, device, d), frozen, opt, sched, scaler, criterion, amp, device, d,
                      average, model if average is None else average.module, backbones.get_spec(cfg.backbone).head,
                      uses_feature_cache(cfg, d), train_x, train_y, steps_per_epoch)


def wrap(model: nn.Module, device: torch.device, d: Dist) -> nn.Module:
    """The model as it trains: itself, or in DistributedDataParallel under torchrun (which syncs the gradients
    of the parameters that train when it is made, so a change of what trains wraps it anew)."""
    if not d.on:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def begin_epoch(state: TrainState, epoch: int, log: Callable[[str], None] = lambda s: None) -> None:
    """What trains in this epoch. finetune="staged": the head alone up to cfg.head_epochs (the body frozen,
    in eval mode), then the whole network, each stage at its own rate (backbones.param_groups); also when a
    resume starts after the switch."""
    cfg = state.cfg
    if cfg.finetune != "staged" or epoch <= cfg.head_epochs or not state.frozen:
        return
    state.frozen = backbones.set_finetune(state.model, cfg.backbone, "full")
    state.train_model = wrap(state.model, state.device, state.dist)
    rates = ", ".join(f"{g['name'].split(':')[0]} {g['lr']:.2g}" for g in state.opt.param_groups)
    log(f"epoch {epoch}: the whole network trains now, earlier layers at lower rates ({rates})")


def setup(cfg: RunConfig, cache_dir: Path | None, device_pref: str = "auto", log: Callable[[str], None] = print,
          fingerprint: str | None = None, should_stop: Callable[[], bool] | None = None) -> TrainState:
    """Join the process group, open and split the dataset, read its cached images, build the model, and
    set up what trains it (setup_training). fingerprint: the dataset the run was created for; another one
    (the files changed since) fails here, before any training."""
    d, device = init_distributed(device_pref)
    torch.manual_seed(cfg.seed)
    ds, split, images, train_idx, val_idx = prepare_data(cfg, cache_dir, log, fingerprint, should_stop)
    order = np.sort(train_idx)
    train_x = torch.from_numpy(np.ascontiguousarray(images[order]))
    train_y = torch.as_tensor(ds.index["label"].to_numpy()[order], dtype=torch.long)
    model = backbones.build_model(cfg.backbone, len(ds.classes), cfg.weights)
    if device.type == "cpu":
        tune_cpu_allocator()
    state = setup_training(cfg, model, train_x, train_y, len(ds.classes), device, d)
    state.ds, state.split, state.images, state.train_rows, state.val_rows = ds, split, images, order, val_idx
    state.val_x = images[val_idx] if len(val_idx) < 4096 else None
    state.val_y = ds.index["label"].to_numpy()[val_idx]
    return state


def restore(state: TrainState, path: Path, log: Callable[[str], None]) -> None:
    """Continue from a resumable state (layout.RESUME): weights, optimizer, schedule, average, and where."""
    st = load_resume_state(path)
    state.model.load_state_dict(st["model"])
    state.opt.load_state_dict(st["optimizer"])
    state.sched.load_state_dict(st["scheduler"])
    state.start_epoch, state.start_step = int(st["epoch"]), int(st["step"])
    state.running = [float(v) for v in st["running"]] if state.start_step else None
    state.best = {"val_f1": float(st["best_f1"]), "epoch": int(st["best_epoch"])}
    if state.average is not None and "average" in st:
        state.average.load_state_dict(st["average"])
    log(f"resuming at epoch {state.start_epoch}, step {state.start_step}")


def save_resume(state: TrainState, path: Path, epoch: int, step: int, running: list[float] | None) -> None:
    """The resumable state at (epoch, step) with the epoch's running sums; rank 0 writes it."""
    if not state.dist.main:
        return
    average = {"average": state.average.state_dict()} if state.average is not None else {}
    atomic_torch_save({"model": _unwrap(state.model).state_dict(), "optimizer": state.opt.state_dict(),
                       "scheduler": state.sched.state_dict(), "epoch": epoch, "step": step,
                       "running": running or [0.0, 0.0, 0.0], "best_f1": state.best["val_f1"],
                       "best_epoch": state.best["epoch"], **average}, path)


# ---------------------------------------------------------------------------------------------- loop

def set_train_mode(model: nn.Module, frozen: list[nn.Module], freeze_bn: bool) -> None:
    model.train()
    for m in frozen:
        m.eval()  # frozen layers keep their statistics
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


@torch.inference_mode()
def evaluate(model: nn.Module, images: np.ndarray | torch.Tensor, labels: np.ndarray, backbone: str,
             device: torch.device, criterion: nn.Module | None = None, batch_size: int = 64,
             amp: torch.dtype | None = None,
             prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, np.ndarray]:
    """Eval mode, no gradients, evaluation preprocessing. Returns (mean loss, probabilities (N, C)).

    prepare replaces the image preprocessing when `images` are already model inputs (the head-only
    fast path passes cached features and the head as the model).
    """
    was_training = model.training
    model.eval()
    probs, loss_sum = [], 0.0
    for i in range(0, len(images), batch_size):
        if prepare is not None:
            x = prepare(torch.as_tensor(images[i:i + batch_size]))
        else:
            x = to_input(torch.as_tensor(np.asarray(images[i:i + batch_size])), backbone, device)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        if criterion is not None and labels is not None:
            y = torch.as_tensor(labels[i:i + batch_size], device=device)
            loss_sum += float(criterion(logits, y)) * len(y)
        probs.append(torch.softmax(logits, dim=1).cpu())
    model.train(was_training)
    p = torch.cat(probs).numpy() if probs else np.zeros((0, 0))
    return (loss_sum / max(1, len(images))), p


BN_IMAGES = 512  # training images that measure the BatchNorm statistics (bn_stats="recomputed"), evenly spaced


@torch.no_grad()
def recompute_bn_stats(state: TrainState) -> int:
    """Measure the kept model's BatchNorm statistics anew on training images, evaluation preprocessing, for
    the BatchNorm layers that trained this epoch (frozen ones keep theirs). A cumulative average (momentum
    None), as torch.optim.swa_utils.update_bn, restricted to those layers. Returns how many layers."""
    trained = {name for name, m in _unwrap(state.train_model).named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training}
    layers = [m for name, m in state.scored.named_modules() if name in trained]
    if not layers or state.feats is not None:
        return 0
    modes = [(m, m.training) for m in state.scored.modules()]
    state.scored.eval()
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    rows = np.unique(np.linspace(0, len(state.train_x) - 1, min(BN_IMAGES, len(state.train_x))).astype(int))
    for i in range(0, len(rows), 64):
        x = to_input(state.train_x[torch.from_numpy(rows[i:i + 64])], state.cfg.backbone, state.device)
        with autocast(state.device, state.amp):
            state.scored(x)
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    for m, training in modes:  # each module's mode as it was (frozen layers stay in eval mode)
        m.training = training
    return len(layers)


def validate(state: TrainState) -> tuple[float, np.ndarray]:
    """The validation loss and probabilities of the model a run keeps, in fp32 even when training runs in
    bf16: the saved validation predictions are exactly what single-image prediction (fp32) gives for the
    same cell. The head-only fast path keeps its features as computed and hands them to the head in fp32."""
    cfg = state.cfg
    if state.feats is not None:
        return evaluate(state.head, state.feats[1], state.val_y, cfg.backbone, state.device, state.criterion,
                        amp=None, prepare=lambda f: f.float())
    return evaluate(state.scored, state.val_images(), state.val_y, cfg.backbone, state.device, state.criterion,
                    amp=None)


def uses_feature_cache(cfg: RunConfig, d: Dist) -> bool:
    """Whether a run trains its head on features computed once (the head-only fast path).

    With finetune="head" the backbone is frozen and in eval mode, so without augmentation each image's
    input to the head is the same in every epoch: computing it once and training the head (a Linear) on
    it gives the same updates as running the backbone at every step, for a fraction of the work. With
    augmentation the images change each epoch, so the normal loop runs (which still does no backward
    pass through the frozen backbone: nothing there requires gradients); under torchrun too.
    """
    return cfg.finetune == "head" and cfg.augment == "none" and not d.on


def feature_batch_size(image_size: int) -> int:
    """Large batches for the one feature pass (no gradients, so memory allows), fewer at large sizes."""
    return int(max(8, min(256, 128 * (128 * 128) // (image_size * image_size))))


def head_features(model: nn.Module, head: str, images: np.ndarray | torch.Tensor, backbone: str,
                  device: torch.device, amp: torch.dtype | None, batch_size: int = 128) -> torch.Tensor:
    """What the head receives for every image: the model in eval mode, evaluation preprocessing, autocast
    as in training, and a forward pre-hook on the head that captures its input (in the dtype autocast
    hands it). Returns (N, features) on the device, an ordinary tensor (usable by autograd)."""
    captured: list[torch.Tensor] = []
    module = model.get_submodule(head)
    handle = module.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = to_input(torch.as_tensor(np.asarray(images[i:i + batch_size])), backbone, device)
                with autocast(device, amp):
                    model(x)
    finally:
        handle.remove()
        for m, mode in modes.items():
            m.training = mode
    if not captured:
        return torch.zeros((0, module.in_features), device=device)
    return torch.cat(captured)  # outside inference mode: a normal tensor, not an inference tensor


def head_inputs(state: TrainState, cache_dir: Path | None, log: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """The head-only fast path's (train, val) head inputs: read from the feature cache, or computed once
    (and kept for the next run)."""
    t0, cfg, ds = time.time(), state.cfg, state.ds
    key = feature_cache_key(state.model, state.head_name, cfg, ds.fingerprint, state.train_rows, state.val_rows,
                            state.device, state.amp)
    fpath = data.cache_folder(cache_dir) / FEATURE_CACHE / f"{key}.safetensors"
    n = f"{len(state.train_x)} + {len(state.val_rows)} images"
    feats = load_cached_features(fpath, state.device)
    if feats is not None:
        log(f"head-only without augmentation: backbone features of {n} read from the feature cache "
            f"({fpath.name}) in {time.time() - t0:.1f}s")
        return feats
    fb = feature_batch_size(cfg.image_size)
    feats = tuple(head_features(state.model, state.head_name, x, cfg.backbone, state.device, state.amp, fb)
                  for x in (state.train_x, state.val_images()))
    log(f"head-only without augmentation: backbone features of {n} computed once in {time.time() - t0:.1f}s; "
        f"the head trains on them")
    if state.dist.main:
        save_cached_features(fpath, feats, log)
    return feats


def _stop_requested(hooks: Hooks, d: Dist) -> bool:
    """A stop asked of any process stops all of them at the same step."""
    stop = hooks.should_stop()
    if d.on:
        flag = torch.tensor([1.0 if stop else 0.0])
        dist.all_reduce(flag)
        stop = bool(flag.item() > 0)
    return stop


def _backward_step(state: TrainState, loss: torch.Tensor) -> None:
    state.opt.zero_grad(set_to_none=True)
    if state.scaler is not None:
        state.scaler.scale(loss).backward()
        state.scaler.step(state.opt)
        state.scaler.update()
    else:
        loss.backward()
        state.opt.step()
    state.sched.step()


def train_one_epoch(state: TrainState, batches: list[np.ndarray], epoch: int, hooks: Hooks, start_step: int = 0,
                    running: list[float] | None = None) -> tuple[float, float, int]:
    """One pass over this process's batches. Returns (mean loss, accuracy, images seen) across processes.

    The model trains on train_x (uint8 images, training preprocessing) or, once the head-only fast path has
    its features, the head alone on them. start_step and running: where a resumed epoch continues.
    """
    cfg, d, device = state.cfg, state.dist, state.device
    if state.feats is not None:
        model, train_x, prepare = state.head, state.feats[0], (lambda f: f)
    else:
        model, train_x = state.train_model, state.train_x
        prepare = state.prepare or (lambda xb: to_input(xb, cfg.backbone, device))
    loss_sum, correct, seen = running or [0.0, 0.0, 0.0]
    codes, jitter = epoch_augment_tables(cfg, epoch, len(train_x))
    steps = len(batches)
    report_every = max(1, steps // 50)
    for step in range(start_step, steps):
        if _stop_requested(hooks, d):
            if hooks.save_resume:
                hooks.save_resume(step, [loss_sum, correct, seen])
            raise Stopped(f"stopped at epoch {epoch}, step {step}/{steps}")
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + step)  # dropout: same draws after a resume
        b = torch.from_numpy(batches[step])
        xb = train_x[b]
        if codes is not None:
            xb = augment(xb, codes[b], None if jitter is None else jitter[b])
        x = prepare(xb)
        y = state.train_y[b].to(device, non_blocking=True)
        with autocast(device, state.amp):
            logits = model(x)
            loss = state.criterion(logits.float(), y)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {float(loss.detach())} at epoch {epoch}, step {step + 1}; "
                                   "training on it would give garbage. Lower the learning rate "
                                   f"(now {cfg.lr:g}) or use fp32.")
        _backward_step(state, loss)
        if state.average is not None:
            state.average.update_parameters(_unwrap(model))
        stats = torch.tensor([float(loss.detach()) * len(y), float((logits.argmax(1) == y).sum()), float(len(y))])
        if d.on:
            dist.all_reduce(stats)
        loss_sum += float(stats[0])
        correct += float(stats[1])
        seen += float(stats[2])
        if (step + 1) % report_every == 0 or step + 1 == steps:
            hooks.emit({"type": events.BATCH, "epoch": epoch, "step": step + 1, "steps": steps,
                        "loss": loss_sum / seen, "acc": correct / seen, "lr": state.opt.param_groups[-1]["lr"],
                        "time": time.time()})
    return loss_sum / max(seen, 1), correct / max(seen, 1), int(seen)


def share_buffers(state: TrainState) -> None:
    """BatchNorm statistics are per process: take rank 0's, so every rank holds the same model."""
    if state.dist.on:
        average = state.average.module.buffers() if state.average is not None else ()
        for buf in [*state.model.buffers(), *average]:
            dist.broadcast(buf, 0)


# ---------------------------------------------------------------------------------------------- checkpoints

def save_checkpoint(model: nn.Module, run_dir: Path, meta: dict) -> None:
    """Best model as safetensors plus a JSON sidecar holding everything needed to rebuild it."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # one step for both files: a failed write (a full disk) keeps the previous pair, never a mixed one
    atomic_write_files({run_dir / CHECKPOINT: save(state), run_dir / SIDECAR: json_bytes(meta)})


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def checkpoint_meta(state: TrainState) -> dict:
    """The sidecar's fields that rebuild the model (layout.SIDECAR); each checkpoint adds its epoch and metrics."""
    cfg, ds, spec = state.cfg, state.ds, backbones.get_spec(state.cfg.backbone)
    return {"format": 1, "backbone": cfg.backbone, "classes": list(ds.classes), "positive": ds.positive,
            "image_size": cfg.image_size, "crop": cfg.crop, "crop_window": data.CELL_WINDOW,
            "weights_init": cfg.weights, "preprocess": PREPROCESS_VERSION,
            "build_kwargs": backbones.build_kwargs(cfg.backbone, cfg.weights),
            "mean": list(spec.mean), "std": list(spec.std),
            "params": backbones.count_parameters(state.model), "dataset_fingerprint": ds.fingerprint,
            "split": state.split.summary(), **_reference(state)}


def _reference(state: TrainState) -> dict:
    """The training images' reference statistics (ood.reference_stats, from a sample of the files as they are
    on disk), which Predict compares a dropped image with."""
    from leukviz.datasets import ood

    return {"reference": ood.reference_stats(state.ds.index["path"].to_numpy()[state.train_rows])}


def start_event(state: TrainState) -> dict:
    """The start event of a run, or its resume event when it continues from a resume point."""
    cfg, amp = state.cfg, state.amp
    first = state.start_epoch == 1 and state.start_step == 0
    return {"type": events.START if first else events.RESUME, "epoch": state.start_epoch - 1,
            "step": state.start_step, "epochs": cfg.epochs, "steps_per_epoch": state.steps_per_epoch,
            "device": device_name(state.device), "precision": str(amp).replace("torch.", "") if amp else "fp32",
            "world_size": state.dist.world, "n_train": int(len(state.train_x)), "n_val": int(len(state.val_rows)),
            "feature_cache": state.fast_head, "split": state.split.summary(), "skipped": len(state.ds.skipped),
            "time": time.time()}


class DatasetChanged(LeukvizError, ValueError):
    """The dataset a run opens is not the one it was created for (its fingerprint in config.json)."""


def prepare_data(cfg: RunConfig, cache_dir: Path | None, log: Callable[[str], None] = lambda s: None,
                 fingerprint: str | None = None, should_stop: Callable[[], bool] | None = None):
    """Open the dataset (checking it is the expected one, when a fingerprint is given), split it and read
    the cached images (decoding them once if needed; a stop request while decoding is Stopped). Fails when
    a class has no usable image left on a side of the split once the files are decoded (data.check_decoded)."""
    ds = data.open_dataset(cfg.data, cache_dir)
    if fingerprint is not None and ds.fingerprint != fingerprint:
        raise DatasetChanged(f"the dataset {cfg.data} is not the one this run was created for: its fingerprint is "
                             f"{ds.fingerprint[:12]} now, {fingerprint[:12]} in {CONFIG} (files were added, removed "
                             "or changed). Start the configuration again to train on the data as it is now.")
    split = data.split_of(ds, cfg)
    t = time.time()
    try:
        images, ok = preprocess.Preprocess.of_config(cfg).cache(ds, cache_dir, should_stop)
    except data.CacheInterrupted as e:
        raise Stopped(str(e)) from None
    log(f"image cache ready in {time.time() - t:.1f}s ({len(ds.index)} images at {cfg.image_size}px)")
    if ds.skipped:
        log(f"skipped {data.skipped_text(ds.skipped)}")
    for w in ds.warnings:  # the layout's (a test folder without a class, ...): before the run, not only on Data
        log(f"warning: {w}")
    if split.leaky and split.warnings:
        log(f"warning: {split.warnings[-1]}")
    train_idx, val_idx = data.check_decoded(ds, split, ok)
    return ds, split, images, train_idx, val_idx


def fit(cfg: RunConfig, run_dir: Path, emit: Emit, *, should_stop: Callable[[], bool] = lambda: False,
        cache_dir: Path | None = None, resume: bool = False, device_pref: str = "auto",
        log: Callable[[str], None] = print, fingerprint: str | None = None) -> dict:
    """Train one run into run_dir. Returns the kept epoch's validation metrics. fingerprint: the dataset the
    run was created for (prepare_data checks it).

    Running out of device memory becomes OutOfMemory, whose message names the batch size and a smaller one.
    """
    try:
        return _fit(cfg, run_dir, emit, should_stop, cache_dir, resume, device_pref, log, fingerprint)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        world = int(os.environ.get("WORLD_SIZE", "1"))
        raise OutOfMemory(out_of_memory_message(cfg, e, world)) from e


FEATURE_CACHE_VERSION = 1


def feature_cache_key(model: nn.Module, head: str, cfg: RunConfig, fingerprint: str, train_idx: np.ndarray,
                      val_idx: np.ndarray, device: torch.device, amp: torch.dtype | None) -> str:
    """What the head's inputs depend on: the frozen backbone's exact weights (hashed, so any weights source
    and seed is covered), the dataset, image size and crop, which images, device type, precision and torch
    version. Two runs that differ only in the head's training (lr, epochs, optimizer...) share it."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for part in (FEATURE_CACHE_VERSION, cfg.backbone, fingerprint, cfg.image_size, cfg.crop, device.type, str(amp),
                 torch.__version__):
        h.update(f"{part}|".encode())
    h.update(np.ascontiguousarray(train_idx, dtype=np.int64))
    h.update(b"|")
    h.update(np.ascontiguousarray(val_idx, dtype=np.int64))
    for name, t in model.state_dict().items():
        if name.startswith(head + "."):
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # hashed in place, no copy
    return h.hexdigest()


def load_cached_features(path: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (train, val) head inputs, or None when absent or unreadable (then they are recomputed)."""
    if not path.is_file():
        return None
    try:
        from safetensors.torch import load_file

        t = load_file(str(path))
        return t["train"].to(device), t["val"].to(device)
    except Exception:  # noqa: BLE001 - a damaged or partial cache file is only a cache miss
        return None


def save_cached_features(path: Path, feats: tuple[torch.Tensor, torch.Tensor], log: Callable[[str], None]) -> None:
    """Best effort: a full disk or a read-only cache only costs the next run the recomputation."""
    from safetensors.torch import save

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save({"train": feats[0].detach().cpu().contiguous(),
                                       "val": feats[1].detach().cpu().contiguous()}))
    except OSError as e:
        log(f"could not keep the head-only features for the next run ({e.strerror or e}); this run is unaffected")

def _fit(cfg: RunConfig, run_dir: Path, emit: Emit, should_stop: Callable[[], bool], cache_dir: Path | None,
         resume: bool, device_pref: str, log: Callable[[str], None], fingerprint: str | None) -> dict:
    state = setup(cfg, cache_dir, device_pref, log, fingerprint, should_stop)
    resume_path, main = run_dir / RESUME, state.dist.main
    if resume and resume_path.exists():
        restore(state, resume_path, log)
    meta = checkpoint_meta(state)
    if main:
        emit(start_event(state))
    result: dict = {}
    for epoch in range(state.start_epoch, cfg.epochs + 1):
        t0 = time.time()
        if state.fast_head and state.feats is None:  # counted in the first epoch's time
            state.feats = head_inputs(state, cache_dir, log)
        begin_epoch(state, epoch, log)
        set_train_mode(state.train_model, state.frozen, cfg.freeze_bn)
        batches = epoch_batches(len(state.train_x), cfg.batch_size, cfg.seed, epoch, state.dist)
        hooks = Hooks(emit if main else _ignore, should_stop,
                      lambda step, running: save_resume(state, resume_path, epoch, step, running))
        tl, ta, seen = train_one_epoch(state, batches, epoch, hooks, state.start_step, state.running)
        state.start_step, state.running = 0, None
        train_seconds = time.time() - t0
        share_buffers(state)
        if cfg.bn_stats == "recomputed":  # the same images on every rank: the ranks stay identical
            recompute_bn_stats(state)
        vl, probs = validate(state)
        pred, val_y = probs.argmax(1), state.val_y
        f1 = weighted_f1(val_y, pred)
        ev = {"type": events.EPOCH, "epoch": epoch, "epochs": cfg.epochs, "train_loss": tl, "train_acc": ta,
              "val_loss": vl, "val_acc": float((pred == val_y).mean()), "val_f1": f1,
              "lr": state.opt.param_groups[-1]["lr"], "seconds": time.time() - t0,  # the head's (last group)
              "images_per_s": seen / max(train_seconds, 1e-9), "time": time.time()}
        if not all(math.isfinite(ev[k]) for k in ("train_loss", "val_loss")):
            raise TrainingDiverged(f"validation loss became {vl} at epoch {epoch}; lower the learning rate")
        # Every rank tracks the best epoch (the same validation on the same weights), so all stop together.
        kept = f1 > state.best["val_f1"] or not cfg.keeps_best
        if kept:
            state.best = {"val_f1": f1, "epoch": epoch}
        if main:
            if kept:
                result = {k: ev[k] for k in ("val_loss", "val_acc", "val_f1", "train_loss", "train_acc")}
                result["best_epoch"] = epoch
                save_checkpoint(state.scored, run_dir, {**meta, "epoch": epoch, "metrics": result})
                write_predictions(run_dir / PREDICTIONS, state.ds, state.val_rows, probs)
            # The epoch event before the resume point that follows it: a crash between the two resumes at
            # this epoch and drops its event, where the other order would lose the event for good.
            emit(ev)
            save_resume(state, resume_path, epoch + 1, 0, None)
        if epoch < cfg.epochs and stops_early(state.best["epoch"], epoch, cfg.patience):
            if main:
                emit(early_stop_event(epoch, state.best["epoch"], cfg.patience))
            break
    if main and not result:  # resumed after the best epoch: report what the checkpoint holds
        result = json.loads((run_dir / SIDECAR).read_text()).get("metrics", {})
    if state.dist.on:
        dist.barrier()
    if main:  # after the last epoch (also when a resume finds none left): nothing below chooses anything
        score_test_set(state, run_dir, cache_dir, log)
    return result


def stops_early(best_epoch: int, epoch: int, patience: int) -> bool:
    """Early stopping: whether `patience` epochs have passed since the best one (patience 0: never)."""
    return patience > 0 and epoch - best_epoch >= patience


def early_stop_event(epoch: int, best_epoch: int, patience: int) -> dict:
    """The event (events.EARLY_STOP) of a run that stops early, with its reason as the page shows it."""
    reason = (f"stopped early at epoch {epoch}: no better validation weighted F1 for {patience} "
              f"epoch{'s' if patience != 1 else ''} (the best, epoch {best_epoch}, is the model kept)")
    return {"type": events.EARLY_STOP, "epoch": epoch, "best_epoch": best_epoch, "patience": patience,
            "reason": reason, "time": time.time()}


def test_is_scored(run_dir: Path) -> bool:
    """Whether layout.TEST_PREDICTIONS holds the kept model's predictions (written after its checkpoint)."""
    out, ckpt = run_dir / TEST_PREDICTIONS, run_dir / CHECKPOINT
    return out.is_file() and ckpt.is_file() and out.stat().st_mtime_ns >= ckpt.stat().st_mtime_ns


def score_test_set(state: TrainState, run_dir: Path, cache_dir: Path | None, log: Callable[[str], None]) -> None:
    """Score the kept model once on the dataset's labelled held-out test rows (Dataset.test_rows) and write
    layout.TEST_PREDICTIONS like the validation predictions. The kept model is what the checkpoint holds
    (the best epoch's weights with select="best", the average with average="ema"), loaded back into the
    scored module, which training no longer needs. Validation's preprocessing and fp32; the decoded images
    come from the run's image cache, which holds every row of the dataset. Best effort: a failure is
    logged and the finished training stands."""
    rows = state.ds.test_rows.index.to_numpy()
    if len(rows) == 0 or test_is_scored(run_dir):
        return
    try:
        from safetensors.torch import load_file

        images, ok = preprocess.Preprocess.of_config(state.cfg).cache(state.ds, cache_dir)
        good = rows[ok[rows]]
        if len(good) < len(rows):
            log(f"test set: {len(rows) - len(good)} of {len(rows)} images unreadable, skipped")
        if len(good) == 0:
            return
        state.scored.load_state_dict(load_file(str(run_dir / CHECKPOINT)))
        _, probs = evaluate(state.scored, images[good], None, state.cfg.backbone, state.device, amp=None)
        write_predictions(run_dir / TEST_PREDICTIONS, state.ds, good, probs)
        epoch = json.loads((run_dir / SIDECAR).read_text()).get("epoch", "?")
    except Exception as e:  # noqa: BLE001 - the run is trained and saved; its test score is an extra
        log(f"test set not scored ({e.__class__.__name__}: {e}); the trained run is unaffected")
        return
    y, pred = state.ds.index["label"].to_numpy()[good], probs.argmax(1)
    log(f"test (held out, not used to choose anything): {len(good)} images, accuracy {float((pred == y).mean()):.4f}, "
        f"weighted F1 {weighted_f1(y, pred):.4f} (the kept model, epoch {epoch}) -> {TEST_PREDICTIONS}")


def write_predictions(path: Path, ds: data.Dataset, rows: np.ndarray, probs: np.ndarray) -> None:
    part = ds.index.iloc[rows]
    df = predictions.frame(part["label"].to_numpy(), probs, ds.classes, part["path"].to_numpy(),
                           part["subject"].to_numpy())
    atomic_write_bytes(path, df.to_csv(index=False).encode())
