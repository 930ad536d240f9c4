"""Preprocessing declared once: how an image file becomes a model's input, and the same in words.

One Preprocess per (backbone, size, crop, window): it decodes (data.load_image, the decoding the image cache
also uses), normalises (the backbone's mean and std) and describes itself (what the ONNX export records).
Training, validation, the image cache, prediction, Grad-CAM and export all take it from here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Sequence

import numpy as np

from leukviz.datasets import data
from leukviz.models import backbones

if TYPE_CHECKING:
    import torch

    from leukviz.models.config import RunConfig


def normalize(images: torch.Tensor, backbone: str | backbones.BackboneSpec) -> torch.Tensor:
    """uint8 NHWC images -> float NCHW (channels-last memory), scaled to [0, 1] and normalised with the
    backbone's mean and std: the one normalisation of training, validation, prediction and export."""
    import torch

    x = images.permute(0, 3, 1, 2).float().div_(255.0)  # NHWC storage seen as NCHW: channels-last for free
    mean, std = _mean_std(backbone) if isinstance(backbone, str) else _spec_mean_std(backbone)
    mean, std = mean.to(x.device).view(1, 3, 1, 1), std.to(x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


@functools.lru_cache(maxsize=None)
def _mean_std(backbone: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _spec_mean_std(backbones.get_spec(backbone))


def _spec_mean_std(spec: backbones.BackboneSpec) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    return torch.tensor(spec.mean), torch.tensor(spec.std)


@dataclass(frozen=True)
class Preprocess:
    """What one model does to an image: decode (crop window, pad to a square, resize), then normalise.

    window: the crop window of data.crop_to_cell; None only for runs of preprocessing version 1 (one zoom
    per cell).
    """

    backbone: str
    image_size: int
    crop: bool
    window: float | None = data.CELL_WINDOW

    @classmethod
    def of_config(cls, cfg: RunConfig) -> Preprocess:
        """A run's preprocessing, as it trains."""
        return cls(cfg.backbone, cfg.image_size, cfg.crop)

    @classmethod
    def of_checkpoint(cls, meta: dict) -> Preprocess:
        """A finished run's preprocessing, from its sidecar (filenames.SIDECAR)."""
        return cls(meta["backbone"], int(meta["image_size"]), bool(meta["crop"]), meta.get("crop_window"))

    @property
    def decoding(self) -> tuple[int, bool, float | None]:
        """What the decoded image depends on: models with the same decoding share one decoded image."""
        return self.image_size, self.crop, self.window

    @property
    def mean(self) -> tuple[float, float, float]:
        return backbones.get_spec(self.backbone).mean

    @property
    def std(self) -> tuple[float, float, float]:
        return backbones.get_spec(self.backbone).std

    def decode(self, src: str | Path | IO[bytes]) -> np.ndarray:
        """One image file as uint8 RGB (size, size, 3); anything unusable raises data.ImageError."""
        return data.load_image(src, self.image_size, self.crop, self.window)

    def fit(self, image: np.ndarray) -> np.ndarray:
        """An image already decoded (data.decode_rgb, at its own size) as this model sees it."""
        return data.fit_image(image, self.image_size, self.crop, self.window)

    def cache(self, ds: data.Dataset, cache_dir: Path | None = None,
              should_stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every image of a dataset decoded once into the memory-mapped image cache: (images, ok).
        should_stop: asked while it is built (data.CacheInterrupted when it says stop)."""
        return data.image_cache(ds, self.image_size, self.crop, cache_dir, window=self.window, should_stop=should_stop)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.backbone)

    def describe(self, classes: Sequence[str]) -> str:
        """How to turn an image file into the model's input, in words (kept in the ONNX metadata)."""
        size, window = self.image_size, self.window
        if not self.crop:
            crop = ""
        elif window is None:  # runs of preprocessing version 1
            crop = "crop to a square around the cell (pixels brighter than 10 on black, 4 % margin), "
        else:
            crop = (f"crop a square of {window:g} x the image's shorter side centred on the cell's bounding box "
                    "(pixels brighter than 10 on black; outside the image is black), the same for every image, "
                    "so the cell keeps its scale; ")
        return (f"decode to 8-bit RGB; {crop}pad to a square on black; resize to {size}x{size} (bilinear); "
                f"scale to [0, 1]; subtract mean {list(self.mean)} and divide by std {list(self.std)} per channel; "
                f"float32 NCHW. Outputs: logits and softmax probabilities over classes {list(classes)}.")
