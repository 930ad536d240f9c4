"""Peak memory of indexing and caching a C-NMC-sized set: a stand-in of that many files, measured in a fresh
process (memchild.py, run as `python -m leukviz.benchmarks.memchild`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from leukviz.benchmarks.settings import CNMC_SETS, CNMC_SIZE, Log
from leukviz.datasets import cnmc


def make_standin(root: Path, n_files: int, side: int = 450, seed: int = 0) -> Path:
    """A C-NMC-layout folder of n_files 450x450 BMPs (C-NMC's format) made from about 200 distinct cells of
    the demo generator, repeated by hard links (copies where links are impossible). Each class repeats its
    own cells, so no image appears under two labels. Returns the C-NMC root."""
    from PIL import Image

    from leukviz.datasets import synthetic

    base = root / cnmc.ROOT
    originals = root / "originals"
    small = synthetic.generate_demo(root / "generated", seed=seed, n_subjects=4, image_size=128, workers=1)
    originals.mkdir(parents=True, exist_ok=True)
    cells: dict[str, list[Path]] = {"all": [], "hem": []}
    for name in cells:
        for k, f in enumerate(sorted((small / cnmc.TRAINING).glob(f"{cnmc.FOLD_GLOB}/{name}/*.png"))):
            path = originals / f"{name}_{k}.bmp"
            with Image.open(f) as img:
                img.convert("RGB").resize((side, side), Image.Resampling.BILINEAR).save(path)
            cells[name].append(path)
    shutil.rmtree(root / "generated")

    def place(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)

    n_train = min(n_files, round(n_files * CNMC_SETS["train"] / CNMC_SIZE))
    n_prelim = min(n_files - n_train, round(n_files * CNMC_SETS["prelim"] / CNMC_SIZE))
    n_final = n_files - n_train - n_prelim
    for i in range(n_train):  # about 2:1 all:hem as in C-NMC, in each of 3 folds; ~25 cells per subject
        name = "all" if i % 3 else "hem"
        subject = f"{i % 60 + 1}" if name == "all" else f"H{i % 40 + 1}"
        dst = base / cnmc.TRAINING / cnmc.fold_name((i // 3) % 3) / name / cnmc.cell_name(subject, i, 1, name)
        place(cells[name][i % len(cells[name])], dst)
    prelim = base / cnmc.PRELIM_IMAGES
    rows = [",".join(cnmc.LABEL_COLUMNS)]
    for i in range(n_prelim):
        name = "all" if i % 3 else "hem"
        place(cells[name][(i * 7) % len(cells[name])], prelim / f"{i + 1}.bmp")
        subject = "P1" if name == "all" else "H99"
        rows.append(f"{cnmc.cell_name(subject, i, 1, name)},{i + 1}.bmp,{int(name == 'all')}")
    (base / cnmc.PRELIM_LABELS).write_text("\n".join(rows) + "\n")
    final = base / cnmc.FINAL_IMAGES
    for i in range(n_final):
        name = "all" if i % 2 else "hem"
        place(cells[name][(i * 3) % len(cells[name])], final / f"{i + 1}.bmp")
    shutil.rmtree(originals)
    return base


def cache_memory(n_files: int, size: int, log: Log) -> dict:
    """Peak resident memory (VmHWM) of a fresh process that indexes a C-NMC-layout stand-in of n_files
    images (open_dataset) and decodes it into the image cache at `size` px (image_cache)."""
    with tempfile.TemporaryDirectory(prefix="leukviz-bench-mem-") as tmp:
        t = time.time()
        root = make_standin(Path(tmp) / "data", n_files)
        made = time.time() - t
        log(f"  stand-in of {n_files} files written in {made:.1f}s; indexing and caching in a fresh process")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                            os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, "-m", "leukviz.benchmarks.memchild", str(root), str(Path(tmp) / "cache"),
                               str(size)],
                              capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"memory measurement failed: {proc.stderr[-2000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update({"files": n_files, "image_size": size, "standin_seconds": made,
                "note": "C-NMC's size" if n_files == CNMC_SIZE else f"a smaller stand-in ({n_files} files), not C-NMC's {CNMC_SIZE}"})
    return res
