"""Re-measure the numbers behind two choices in the code (docs/BENCHMARKS.md, "Numbers behind the code"):
the cell mask of decode.cell_box, and opening (indexing and fingerprinting) the real development folder.

    PYTHONPATH=. .venv/bin/python scripts/code_numbers.py
"""

import tempfile
import time
from pathlib import Path

import numpy as np

from leukviz.datasets import data

DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cnmc-fold1-dev"


def per_call(f, n: int = 200) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n


a = np.random.default_rng(0).integers(0, 255, (450, 450, 3), dtype=np.uint8)
reduce = per_call(lambda: a.max(axis=2) > 10)
planes = per_call(lambda: np.maximum(np.maximum(a[..., 0], a[..., 1]), a[..., 2]) > 10)
print(f"mask of a 450x450 cell: a.max(axis=2) {reduce * 1e3:.2f} ms, np.maximum of the planes "
      f"{planes * 1e3:.2f} ms, ratio {reduce / planes:.1f}x")
if DEV.is_dir():
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        ds = data.open_dataset(str(DEV), Path(cache))
        seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in DEV.rglob("*.png"))
    print(f"open_dataset (index + fingerprint) of cnmc-fold1-dev, {len(ds.index)} files, {size / 1e6:.0f} MB: "
          f"{seconds:.2f} s")
else:
    print(f"{DEV} not found: the dataset's number needs the real development folder beside the repo")
