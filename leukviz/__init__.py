"""leukviz: fine-tune and compare CNN backbones on single-cell leukemia images (C-NMC 2019).

The Python API (leukviz/api.py) is here, loaded on first use so that `import leukviz` stays light (no torch,
no pandas): leukviz.train, leukviz.runs, leukviz.compare, leukviz.predict, leukviz.load (and
leukviz.sample_images, a few labelled cells to try predict on)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

API = ("train", "runs", "compare", "predict", "load", "sample_images", "Run", "Comparison")
__all__ = ["__version__", *API]

if TYPE_CHECKING:
    from leukviz.api import Comparison, Run, compare, load, predict, runs, sample_images, train  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in API:
        from leukviz import api

        return getattr(api, name)
    raise AttributeError(f"module 'leukviz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
