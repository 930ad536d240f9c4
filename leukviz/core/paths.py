"""Where leukviz keeps its files, and the one reader of every variable that moves them: LEUKVIZ_HOME (default
~/.leukviz), LEUKVIZ_RUNS (default <home>/runs) and LEUKVIZ_CACHE (default <home>/cache). Unset or empty is the
default, never the current folder. Torch-free."""

from __future__ import annotations

import os
from pathlib import Path

HOME, RUNS, CACHE = "LEUKVIZ_HOME", "LEUKVIZ_RUNS", "LEUKVIZ_CACHE"


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
