"""The head-only fast path: with a frozen backbone and no augmentation, the head's inputs are computed once
(and kept in the feature cache for the next run of the same backbone, data and size), and the head trains on
them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from leukviz.core.filenames import FEATURE_CACHE
from leukviz.core.storage import atomic_write_bytes
from leukviz.datasets import data
from leukviz.models import forward
from leukviz.models.config import RunConfig
from leukviz.training.distributed import Dist
from leukviz.training.state import TrainState


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
    """What the head receives for every image: the eval-mode forward loop (forward.outputs: evaluation
    preprocessing, autocast as in training) with a forward pre-hook on the head that captures its input (in
    the dtype autocast hands it). Returns (N, features) on the device, an ordinary tensor (usable by autograd)."""
    captured: list[torch.Tensor] = []
    module = model.get_submodule(head)
    handle = module.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
    try:
        for _ in forward.outputs(model, images, backbone, device, amp=amp, batch_size=batch_size):
            pass
    finally:
        handle.remove()
    if not captured:
        return torch.zeros((0, module.in_features), device=device)
    return torch.cat(captured)  # outside inference mode: a normal tensor, not an inference tensor


def head_inputs(state: TrainState, cache_dir: Path | None, log: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """The head-only fast path's (train, val) head inputs: read from the feature cache, or computed once
    (and kept for the next run)."""
    t0, cfg, ds = time.time(), state.cfg, state.ds
    key = feature_cache_key(state.model, state.spec.head, cfg, ds.fingerprint, state.train_rows, state.val_rows,
                            state.device, state.amp)
    fpath = data.cache_folder(cache_dir) / FEATURE_CACHE / f"{key}.safetensors"
    n = f"{len(state.train_x)} + {len(state.val_rows)} images"
    feats = load_cached_features(fpath, state.device)
    if feats is not None:
        log(f"head-only without augmentation: backbone features of {n} read from the feature cache "
            f"({fpath.name}) in {time.time() - t0:.1f}s")
        return feats
    fb = feature_batch_size(cfg.image_size)
    feats = tuple(head_features(state.model, state.spec.head, x, state.spec, state.device, state.amp, fb)
                  for x in (state.train_x, state.val_images()))
    log(f"head-only without augmentation: backbone features of {n} computed once in {time.time() - t0:.1f}s; "
        f"the head trains on them")
    if state.dist.main:
        save_cached_features(fpath, feats, log)
    return feats


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
