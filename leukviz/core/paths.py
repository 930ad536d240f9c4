"""Where leukviz keeps its files, and the one reader of every LEUKVIZ_* variable: LEUKVIZ_HOME (default
~/.leukviz), LEUKVIZ_RUNS (default <home>/runs) and LEUKVIZ_CACHE (default <home>/cache), where unset or empty is
the default, never the current folder; LEUKVIZ_DATA_ROOTS (data_roots: where the served dashboard may open
datasets); and the switches LEUKVIZ_OFFLINE, LEUKVIZ_CPU_BF16, LEUKVIZ_MALLOC_TUNE and
LEUKVIZ_DIST_TIMEOUT (switches()). Torch-free."""

from __future__ import annotations

import os
from pathlib import Path

HOME, RUNS, CACHE = "LEUKVIZ_HOME", "LEUKVIZ_RUNS", "LEUKVIZ_CACHE"
OFFLINE, CPU_BF16, MALLOC_TUNE, DIST_TIMEOUT = ("LEUKVIZ_OFFLINE", "LEUKVIZ_CPU_BF16", "LEUKVIZ_MALLOC_TUNE",
                                               "LEUKVIZ_DIST_TIMEOUT")


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


DATA_ROOTS = "LEUKVIZ_DATA_ROOTS"


def data_roots() -> list[Path] | None:
    """LEUKVIZ_DATA_ROOTS: the folders (joined by os.pathsep, ':' on Linux) under which the served dashboard
    may open datasets, from a link's ?dataset= or the Data page's folder field; the built-in demo and the
    uploads folder are always allowed. Unset or empty: any path (a dashboard on localhost, for the user who
    runs it). Set it whenever the dashboard is served beyond localhost (docs/RELIABILITY.md)."""
    value = os.environ.get(DATA_ROOTS, "").strip()
    if not value:
        return None
    return [Path(os.path.realpath(Path(p.strip()).expanduser())) for p in value.split(os.pathsep) if p.strip()]


def data_refusal(spec: str) -> str | None:
    """Why the dashboard may not open the dataset spec (None when it may): with data_roots set, a path that
    is not inside one of them (links resolved first, so a link out of a root is outside too)."""
    roots = data_roots()
    if roots is None or spec == "demo":
        return None
    real = Path(os.path.realpath(Path(str(spec)).expanduser()))
    if any(real == r or r in real.parents for r in [*roots, Path(os.path.realpath(uploads()))]):
        return None
    return (f"{spec} is outside the data folders this dashboard may open ({DATA_ROOTS}: "
            f"{os.pathsep.join(str(r) for r in roots)})")
