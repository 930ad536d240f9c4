"""What the benchmark measures (BenchConfig), the product configuration each path trains with (run_config), and
what the modules share: C-NMC's sizes, the log, the precision's name, a device sync."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from leukviz.models import backbones
from leukviz.models.config import RunConfig, resolve

CNMC_SIZE = 15_135  # images in C-NMC 2019 as downloaded: 10,661 training + 1,867 preliminary + 2,607 final


CNMC_SETS = {"train": 10_661, "prelim": 1_867}  # the rest is the unlabeled final set


QUICK_MEMORY_FILES = 1_000


HEAD_EPOCHS = 5


Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. quick: batch 16 and a few warm-up and timed batches per path (extrapolated), a
    smaller stand-in for the memory measurement; otherwise batch 32 and whole epochs."""

    backbones: tuple[str, ...] = tuple(backbones.BACKBONES)
    image_size: int = 128
    batch_size: int = 0  # 0: 16 quick, 32 full
    data: str = "demo"
    fold: int = 0  # the training_data/fold_<k> folder both paths read (C-NMC layout and the demo)
    quick: bool = False
    device: str = "auto"
    precision: str = "auto"  # leukviz's paths; the plain loop is always fp32
    weights: str = "none"  # speed does not depend on the weights' values; none needs no download
    threads: int = 0  # 0: torch's default (one per core)
    plain_workers: tuple[int, ...] = ()  # DataLoader num_workers tried; (): (0,) quick, (0, 2) full
    memory_files: int = 0  # 0: 1,000 quick, 15,135 (C-NMC's size) full; -1: skip
    latency: bool = True
    ablation: bool = False  # also measure leukviz's full fine-tuning with each speed-up added in turn
    seed: int = 0

    @property
    def batch(self) -> int:
        return self.batch_size or (16 if self.quick else 32)

    @property
    def warmup_plain(self) -> int:
        return 1 if self.quick else 2

    @property
    def warmup_leukviz(self) -> int:
        """bf16 with the tuned allocator settles after about three steps (kernels created, heap grown); quick
        takes two, which if anything under-states leukviz."""
        return 2 if self.quick else 3

    @property
    def timed_plain(self) -> int | None:
        """Timed batches of the plain loop; None is one whole epoch (its fp32 steps vary little)."""
        return 1 if self.quick else None

    @property
    def timed_leukviz(self) -> int | None:
        return 2 if self.quick else None

    @property
    def min_seconds_plain(self) -> float:
        """quick: keep timing batches until this long has passed (fast backbones get several)."""
        return 1.0 if self.quick else 0.0

    @property
    def min_seconds_leukviz(self) -> float:
        return 1.0 if self.quick else 0.0

    @property
    def workers(self) -> tuple[int, ...]:
        return self.plain_workers or ((0,) if self.quick else (0, 2))

    @property
    def n_memory_files(self) -> int:
        return self.memory_files or (QUICK_MEMORY_FILES if self.quick else CNMC_SIZE)

    @property
    def feature_part(self) -> int | None:
        """quick: the head-only feature pass is timed on this many images and extrapolated."""
        return 32 if self.quick else None


def precision_name(amp: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, "fp32") if amp is not None else "fp32"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(bc: BenchConfig, backbone: str, finetune: str = "full", augment: str | None = None) -> RunConfig:
    """The product's default fine-tuning configuration for this backbone (quick preset, ImageNet recipe:
    AdamW), at the benchmark's size and batch, with the benchmark's weights (none: no download needed).
    crop=False: ImageFolder's Resize does not crop, so both paths see the same pixels (the crop costs
    nothing per epoch: it happens once, when the cache is built)."""
    cfg = resolve(backbone, "quick", "imagenet", bc.data, image_size=bc.image_size, batch_size=bc.batch,
                  finetune=finetune, precision=bc.precision, seed=bc.seed, augment=augment, crop=False)
    return replace(cfg, weights=bc.weights)
