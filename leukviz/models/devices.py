"""The device and its precision, shared by training and prediction: CUDA, else Apple MPS, else CPU; the
autocast dtype each one gets; the CPU allocator tuning a training process applies."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

import torch

from leukviz.core import paths


def pick_device(pref: str = "auto") -> torch.device:
    """CUDA, else Apple MPS, else CPU (or the one asked for)."""
    if pref != "auto":
        try:
            device = torch.device(pref)
        except RuntimeError:
            raise ValueError(f"{pref!r} is not a device; choose one of: auto, cpu, cuda, cuda:N, mps") from None
        if device.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device {pref!r} cannot train or predict; choose one of: auto, cpu, cuda, cuda:N, mps")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {pref!r} asked for, but no CUDA GPU is available here; use --device cpu or auto")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return {"mps": "Apple GPU (MPS)"}.get(device.type, f"CPU ({torch.get_num_threads()} threads)")


def cpu_has_bf16() -> bool:
    """True where the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for this precision setting on this device; None means plain fp32.

    auto on a CPU with bf16 matrix instructions (AVX512-BF16 or AMX) is bf16: measured faster for all three
    backbones without a loss of validation accuracy (docs/BENCHMARKS.md); LEUKVIZ_CPU_BF16=0 opts out.
    """
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "fp16":
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        if precision == "bf16" or (precision == "auto" and paths.cpu_bf16_allowed()
                                   and cpu_has_bf16()):
            return torch.bfloat16
        return None
    return None  # MPS: fp32


_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process for reuse (glibc: no mmap for large blocks, no trimming).

    By default glibc serves every block over 32 MB (activations, VGG16's 25088x4096 weight and gradient) with
    a fresh mmap and unmaps it when freed, so each training step page-faults gigabytes in again: a large
    share of a VGG16 step, neutral for ResNet50/GoogLeNet (docs/BENCHMARKS.md, "Numbers behind the code").
    The cost: the process keeps its peak memory until it ends, which a training process does anyway.
    Process-wide and idempotent; LEUKVIZ_MALLOC_TUNE=0 opts out; does nothing off glibc. Returns whether
    it is in effect.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if not paths.malloc_tune_allowed() or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only (musl has no mallopt tunables of this kind)  # noqa: B018
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    _ALLOCATOR_TUNED = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    return _ALLOCATOR_TUNED


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
