"""The one eval-mode forward loop, and the model's input from cached uint8 images. Validation, the test set,
the head-only fast path's features and prediction all run a model through `outputs`; training only adds
its own step (training/engine.py)."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from leukviz.models import preprocess
from leukviz.models.backbones import BackboneSpec
from leukviz.models.devices import autocast


def to_input(x_uint8: torch.Tensor, backbone: str | BackboneSpec, device: torch.device) -> torch.Tensor:
    """uint8 NHWC images on the CPU -> the model's normalised input on the device (pinned for a CUDA copy)."""
    non_blocking = device.type == "cuda"
    if non_blocking:
        x_uint8 = x_uint8.pin_memory()
    return preprocess.normalize(x_uint8.to(device, non_blocking=non_blocking), backbone)


def outputs(model: nn.Module, images: np.ndarray | torch.Tensor, backbone: str | BackboneSpec, device: torch.device, *,
            amp: torch.dtype | None = None, batch_size: int = 64,
            prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[torch.Tensor]:
    """The model's output for each batch of `images`, in order: eval mode (every module's own mode is put back
    afterwards, frozen layers included), inference mode, evaluation preprocessing (to_input) or `prepare`
    when the images are something else (cached features, an augmented view), autocast at `amp`."""
    prepare = prepare or (lambda xb: to_input(xb, backbone, device))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = prepare(_batch(images[i:i + batch_size]))
                with autocast(device, amp):
                    yield model(x)
    finally:
        for m, mode in modes:
            m.training = mode


def _batch(part: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A batch as a tensor; a read-only array (a memory-mapped image cache) is copied, never written through."""
    if isinstance(part, torch.Tensor):
        return part
    part = np.asarray(part)
    return torch.from_numpy(part if part.flags.writeable else part.copy())


def evaluate(model: nn.Module, images: np.ndarray | torch.Tensor, labels: np.ndarray | None, backbone: str | BackboneSpec,
             device: torch.device, *, criterion: nn.Module | None = None, batch_size: int = 64,
             amp: torch.dtype | None = None,
             prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, np.ndarray]:
    """(mean loss, probabilities (N, C)) of `outputs`: the loss when a criterion and labels are given.

    prepare replaces the image preprocessing when `images` are already model inputs (the head-only
    fast path passes cached features and the head as the model).
    """
    probs, loss_sum, start = [], 0.0, 0
    for out in outputs(model, images, backbone, device, amp=amp, batch_size=batch_size, prepare=prepare):
        logits = out.float()
        if criterion is not None and labels is not None:
            y = torch.as_tensor(labels[start:start + len(logits)], device=device)
            loss_sum += float(criterion(logits, y)) * len(y)
        start += len(logits)
        probs.append(torch.softmax(logits, dim=1).cpu())
    p = torch.cat(probs).numpy() if probs else np.zeros((0, 0))
    return (loss_sum / max(1, len(images))), p
