"""Where leukviz keeps its files, and the one reader of every LEUKVIZ_* variable: LEUKVIZ_HOME (default
~/.leukviz), LEUKVIZ_RUNS (default <home>/runs) and LEUKVIZ_CACHE (default <home>/cache), where unset or empty is
the default, never the current folder; and the switches LEUKVIZ_OFFLINE, LEUKVIZ_CPU_BF16, LEUKVIZ_MALLOC_TUNE and
LEUKVIZ_DIST_TIMEOUT (switches()). Torch-free."""

from __future__ import annotations

import os
from pathlib import Path

HOME, RUNS, CACHE = "LEUKVIZ_HOME", "LEUKVIZ_RUNS", "LEUKVIZ_CACHE"
OFFLINE, CPU_BF16, MALLOC_TUNE, DIST_TIMEOUT = ("LEUKVIZ_OFFLINE", "LEUKVIZ_CPU_BF16", "LEUKVIZ_MALLOC_TUNE",
                                               "LEUKVIZ_DIST_TIMEOUT")
# Set by the device pool (runstore.pool) for each worker: its own device queue, so workers train at once.
DEVICE_SLOT = "LEUKVIZ_DEVICE_SLOT"


def offline() -> bool:
    """LEUKVIZ_OFFLINE=1: never download ImageNet weights (the tests, an air-gapped machine)."""
    return os.environ.get(OFFLINE) == "1"


def cpu_bf16_allowed() -> bool:
    """LEUKVIZ_CPU_BF16=0 turns off bfloat16 autocast on CPUs that have it (precision "auto")."""
    return os.environ.get(CPU_BF16) != "0"


def malloc_tune_allowed() -> bool:
    """LEUKVIZ_MALLOC_TUNE=0 leaves glibc's allocator as it is (devices.tune_cpu_allocator)."""
    return os.environ.get(MALLOC_TUNE) != "0"


def dist_timeout() -> int:
    """Seconds a torchrun process group waits for a peer (LEUKVIZ_DIST_TIMEOUT, default 600)."""
    return int(os.environ.get(DIST_TIMEOUT, 600))


def env_path(name: str, default: Path | str) -> Path:
    """A folder named by an environment variable; unset or empty (LEUKVIZ_HOME="") means the default."""
    value = os.environ.get(name, "").strip()
    return Path(value or default).expanduser()


def home() -> Path:
    return env_path(HOME, Path.home() / ".leukviz")


def cache_root() -> Path:
    """The cache: decoded images, extracted zips, the demo, head features, learning-rate sweeps."""
    return env_path(CACHE, home() / "cache")


def runs_default() -> tuple[Path, str]:
    """The runs folder when no --runs-dir is given, and the variable that chose it (for messages)."""
    return env_path(RUNS, home() / "runs"), RUNS if os.environ.get(RUNS, "").strip() else HOME


def uploads() -> Path:
    """Uploaded datasets, each in a folder named by its content."""
    return home() / "uploads"
