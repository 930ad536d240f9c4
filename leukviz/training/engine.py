"""The training loop: setup, train_one_epoch, validate and fit, which runs the loop and announces its named
events to its callbacks (callbacks.py: the one protocol; record, keep the best model, stop on request, stop
early, score the test set; here the two that change what trains: the staged switch and the head-only features).
It knows nothing of any UI. Its parts: distributed.py, optim.py, features.py (the head-only fast
path), checkpoints.py (what a run writes); the eval-mode forward loop is models/forward.py."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from leukviz.core import events
from leukviz.core.errors import LeukvizError
from leukviz.core.events import Emit
from leukviz.core.filenames import CONFIG, RESUME
from leukviz.datasets import data
from leukviz.models import backbones, preprocess
from leukviz.models.augmentation import augment, draw_jitter
from leukviz.models.config import RunConfig
from leukviz.models.devices import autocast, autocast_dtype, device_name, tune_cpu_allocator
from leukviz.models.forward import evaluate, to_input
from leukviz.scoring.metrics import weighted_f1
from leukviz.training import callbacks, checkpoints, features, optim, tblog
from leukviz.training.distributed import Dist, init_distributed, share_buffers, unwrap
from leukviz.training.protocol import Callback, Callbacks, Stopped
from leukviz.training.state import TrainState


class TrainingDiverged(LeukvizError, RuntimeError):
    """The loss became NaN or infinite (its value: .loss)."""

    def __init__(self, message: str, loss: float = float("nan")):
        super().__init__(message)
        self.loss = loss


class OutOfMemory(LeukvizError, RuntimeError):
    """The device ran out of memory; the message names the batch size that was tried and a smaller one."""


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


# ---------------------------------------------------------------------------------------------- set-up

def _ignore(event: dict) -> None:
    """The emit of processes other than rank 0 (one metrics stream per run)."""


def setup_training(cfg: RunConfig, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, n_classes: int,
                   device: torch.device, d: Dist | None = None, total_steps: int | None = None) -> TrainState:
    """What a run trains with, around a built model: frozen layers, the device (channels-last), loss,
    optimizer, schedule, autocast, gradient scaler, weight average, DDP. The benchmark uses it as is.
    total_steps: the schedule's length (default: the run's epochs)."""
    d, spec = d or Dist(), backbones.get_spec(cfg.backbone)  # the backbone's facts, looked up once per run
    frozen = backbones.set_finetune(model, spec, cfg.finetune)
    model = model.to(device, memory_format=torch.channels_last)
    weights = optim.class_weights(train_y.numpy(), n_classes) if cfg.class_balance == "weighted_loss" else None
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))
    staged = cfg.finetune == "staged"
    opt = optim.make_optimizer(cfg, backbones.param_groups(model, spec, cfg.lr) if staged else model.parameters())
    steps_per_epoch = len(epoch_batches(len(train_x), cfg.batch_size, cfg.seed, 1, d))
    sched = optim.make_scheduler(cfg, opt, steps_per_epoch * cfg.epochs if total_steps is None else total_steps,
                           steps_per_epoch * cfg.head_epochs if staged else 0)
    amp = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 and device.type == "cuda" else None
    average = optim.make_average(cfg, model)
    return TrainState(cfg, model, wrap(model, device, d), frozen, opt, sched, scaler, criterion, amp, device, d,
                      average, model if average is None else average.module, spec,
                      features.uses_feature_cache(cfg, d), train_x, train_y, steps_per_epoch)


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
    state.frozen = backbones.set_finetune(state.model, state.spec, "full")
    state.train_model = wrap(state.model, state.device, state.dist)
    rates = ", ".join(f"{g['name'].split(':')[0]} {g['lr']:.2g}" for g in state.opt.param_groups)
    log(f"epoch {epoch}: the whole network trains now, earlier layers at lower rates ({rates})")


def setup(cfg: RunConfig, cache_dir: Path | None, *, device_pref: str = "auto", log: Callable[[str], None] = print,
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


# ---------------------------------------------------------------------------------------------- loop

def set_train_mode(model: nn.Module, frozen: list[nn.Module], freeze_bn: bool) -> None:
    model.train()
    for m in frozen:
        m.eval()  # frozen layers keep their statistics
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


BN_IMAGES = 512  # training images that measure the BatchNorm statistics (bn_stats="recomputed"), evenly spaced


@torch.no_grad()
def recompute_bn_stats(state: TrainState) -> int:
    """Measure the kept model's BatchNorm statistics anew on training images, evaluation preprocessing, for
    the BatchNorm layers that trained this epoch (frozen ones keep theirs). A cumulative average (momentum
    None), as torch.optim.swa_utils.update_bn, restricted to those layers. Returns how many layers."""
    trained = {name for name, m in unwrap(state.train_model).named_modules()
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
        x = to_input(state.train_x[torch.from_numpy(rows[i:i + 64])], state.spec, state.device)
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
    if state.feats is not None:
        return evaluate(state.head, state.feats[1], state.val_y, state.spec, state.device,
                        criterion=state.criterion, prepare=lambda f: f.float())
    return evaluate(state.scored, state.val_images(), state.val_y, state.spec, state.device,
                    criterion=state.criterion)


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


def train_one_epoch(state: TrainState, batches: list[np.ndarray], epoch: int,
                    callbacks: Callbacks | Sequence[Callback] = (), start_step: int = 0,
                    running: list[float] | None = None) -> tuple[float, float, int]:
    """One pass over this process's batches. Returns (mean loss, accuracy, images seen) across processes.

    The model trains on train_x (uint8 images, training preprocessing) or, once the head-only fast path has
    its features, the head alone on them. Around each optimizer step the callbacks hear before_step and
    after_step (state.step, state.loss, state.running); one that sets state.stop_epoch ends the epoch there.
    start_step and running: where a resumed epoch continues.
    """
    cfg, d, device = state.cfg, state.dist, state.device
    cbs = callbacks if isinstance(callbacks, Callbacks) else Callbacks(callbacks)
    if state.feats is not None:
        model, train_x, prepare = state.head, state.feats[0], (lambda f: f)
    else:
        model, train_x = state.train_model, state.train_x
        prepare = lambda xb: to_input(xb, state.spec, device)  # noqa: E731
    state.running = list(running or [0.0, 0.0, 0.0])
    state.epoch, state.steps, state.stop_epoch = epoch, len(batches), False
    codes, jitter = epoch_augment_tables(cfg, epoch, len(train_x))
    for step in range(start_step, state.steps):
        state.step = step
        cbs("before_step", state)
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
            value = float(loss.detach())
            raise TrainingDiverged(f"loss became {value} at epoch {epoch}, step {step + 1}; "
                                   "training on it would give garbage. Lower the learning rate "
                                   f"(now {cfg.lr:g}) or use fp32.", value)
        _backward_step(state, loss)
        if state.average is not None:
            state.average.update_parameters(unwrap(model))
        state.loss = float(loss.detach())
        stats = torch.tensor([state.loss * len(y), float((logits.argmax(1) == y).sum()), float(len(y))])
        if d.on:
            dist.all_reduce(stats)
        state.running = [r + float(s) for r, s in zip(state.running, stats)]
        cbs("after_step", state)
        if state.stop_epoch:
            break
    loss_sum, correct, seen = state.running
    return loss_sum / max(seen, 1), correct / max(seen, 1), int(seen)


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
        log: Callable[[str], None] = print, fingerprint: str | None = None,
        callbacks: Sequence[Callback] = ()) -> dict:
    """Train one run into run_dir. Returns the kept epoch's validation metrics. fingerprint: the dataset the
    run was created for (prepare_data checks it). callbacks: listeners added after a run's own (run_callbacks).

    Running out of device memory becomes OutOfMemory, whose message names the batch size and a smaller one.
    """
    try:
        state = setup(cfg, cache_dir, device_pref=device_pref, log=log, fingerprint=fingerprint,
                      should_stop=should_stop)
        resume_path = run_dir / RESUME
        if resume and resume_path.exists():
            checkpoints.restore(state, resume_path, log)
        own = run_callbacks(state, run_dir, emit if state.dist.main else _ignore, should_stop, cache_dir, log)
        fit_loop(state, Callbacks([*own, *callbacks]), log)
        return own[0].kept()
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        world = int(os.environ.get("WORLD_SIZE", "1"))
        raise OutOfMemory(out_of_memory_message(cfg, e, world)) from e


class StagedFinetune(Callback):
    """finetune="staged": the whole network trains from epoch cfg.head_epochs + 1 (begin_epoch)."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def before_epoch(self, state: TrainState) -> None:
        begin_epoch(state, state.epoch, self.log)


class HeadFeatures(Callback):
    """The head-only fast path: the backbone's features of every image, computed (or read from the feature
    cache) before the first epoch that needs them; the loop then trains the head on them."""

    def __init__(self, cache_dir: Path | None, log: Callable[[str], None]):
        self.cache_dir, self.log = cache_dir, log

    def before_epoch(self, state: TrainState) -> None:
        if state.fast_head and state.feats is None:
            state.feats = features.head_inputs(state, self.cache_dir, self.log)


def run_callbacks(state: TrainState, run_dir: Path, emit: Emit, should_stop: Callable[[], bool],
                  cache_dir: Path | None, log: Callable[[str], None]) -> list[Callback]:
    """A run's own callbacks, in the order they hear each event: KeepBest first (its kept() is fit's result;
    it sets the best epoch that early stopping reads), then record, early stopping, test scoring; the staged
    switch and the head-only features before each epoch; a stop request before each step."""
    main = state.dist.main
    cbs: list[Callback] = [callbacks.KeepBest(run_dir, checkpoints.checkpoint_meta(state), main),
            callbacks.Record(run_dir, emit, start_event), callbacks.EarlyStopping(emit),
            callbacks.TestScoring(run_dir, cache_dir, log, main), HeadFeatures(cache_dir, log), StagedFinetune(log),
            callbacks.RecordBatches(emit), callbacks.StopOnRequest(should_stop, run_dir / RESUME)]
    if main and tblog.available():  # event files beside the run with the optional tensorboard extra
        cbs.append(tblog.TensorBoardLog(run_dir, state.cfg.to_dict(), state.start_epoch))
    return cbs


def fit_loop(state: TrainState, cbs: Callbacks, log: Callable[[str], None] = lambda s: None) -> None:
    """The epochs from state.start_epoch, announcing before_fit, then per epoch before_epoch, the steps'
    events (train_one_epoch) and after_epoch (state.ev, state.probs), and after_fit once the last epoch is
    done (also when a resume finds none left) or a callback set state.stop_fit. Every callback hears every
    event; a stop or a failure ends it by an exception, without after_fit."""
    cbs("before_fit", state)
    for epoch in range(state.start_epoch, state.cfg.epochs + 1):
        state.epoch = epoch
        cbs("before_epoch", state)
        state.ev, state.probs = run_epoch(state, epoch, cbs)
        cbs("after_epoch", state)
        if state.stop_fit:
            break
    if state.dist.on:
        torch.distributed.barrier()
    cbs("after_fit", state)


def run_epoch(state: TrainState, epoch: int, cbs: Callbacks) -> tuple[dict, np.ndarray]:
    """Train one epoch and validate the model a run keeps: the epoch event and the validation probabilities."""
    t0, cfg = time.time(), state.cfg
    set_train_mode(state.train_model, state.frozen, cfg.freeze_bn)
    batches = epoch_batches(len(state.train_x), cfg.batch_size, cfg.seed, epoch, state.dist)
    tl, ta, seen = train_one_epoch(state, batches, epoch, cbs, state.start_step, state.running)
    state.start_step, state.running = 0, None
    train_seconds = time.time() - t0
    share_buffers(state.dist, [state.model] + ([state.average.module] if state.average is not None else []))
    if cfg.bn_stats == "recomputed":  # the same images on every rank: the ranks stay identical
        recompute_bn_stats(state)
    vl, probs = validate(state)
    pred, val_y = probs.argmax(1), state.val_y
    ev = {"type": events.EPOCH, "epoch": epoch, "epochs": cfg.epochs, "train_loss": tl, "train_acc": ta,
          "val_loss": vl, "val_acc": float((pred == val_y).mean()), "val_f1": weighted_f1(val_y, pred),
          "lr": state.opt.param_groups[-1]["lr"], "seconds": time.time() - t0,  # the head's (last group)
          "images_per_s": seen / max(train_seconds, 1e-9), "time": time.time()}
    if not all(math.isfinite(ev[k]) for k in ("train_loss", "val_loss")):
        raise TrainingDiverged(f"validation loss became {vl} at epoch {epoch}; lower the learning rate")
    return ev, probs
