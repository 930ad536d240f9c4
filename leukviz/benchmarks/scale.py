"""How costs grow with a lab's work (`python -m leukviz bench --scale`): listing 10 / 100 / 1,000 runs, predicting
2k / 20k / 50k files, indexing and caching 15k / 100k files, each as a ratio to its smallest size.

Every size is made without training or new images: runs are clones of one trained run folder (its files
hard-linked, a config.json of their own with another seed, so another run id), image folders are hard links
(or copies across filesystems) of one dataset's images. Each measurement runs in a fresh child process, so
its peak memory (ru_maxrss) and start-up are its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from leukviz.core import filenames
from leukviz.core.storage import atomic_write_json
from leukviz.runstore import runfiles

Log = Callable[[str], None]
LIST_SIZES = (10, 100, 1_000)
PREDICT_SIZES = (2_000, 20_000, 50_000)
INDEX_SIZES = (15_135, 100_000)
# The files of a run folder a clone shares with its source (hard links); config.json is its own, and the
# stored summary, the lock and the launch files are never shared.
_SHARED = (filenames.STATUS, filenames.METRICS, filenames.CHECKPOINT, filenames.SIDECAR, filenames.PREDICTIONS,
           filenames.TEST_PREDICTIONS, filenames.CALIBRATION, filenames.LOG)


def _link(src: Path, dest: Path) -> None:
    """A hard link, or a copy where links cannot be made (another filesystem)."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def clone_runs(source: Path, root: Path, n: int, start: int = 0) -> list[Path]:
    """n finished runs in root cloned from one trained run folder: each its source's files hard-linked and a
    config.json of its own (seed 10,000+i on the source's split, so its own run id), as if n repeats of one
    configuration had been trained (config.repeats)."""
    obj, cfg, fp = runfiles.read_config(Path(source))
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        c = replace(cfg, seed=10_000 + i, split_seed=cfg.split_rng_seed)  # repeats: one split for all
        run_id = c.identity(fp)
        folder = root / run_id
        if folder.exists():
            out.append(folder)
            continue
        folder.mkdir()
        for name in _SHARED:
            if (Path(source) / name).exists():
                _link(Path(source) / name, folder / name)
        atomic_write_json(folder / filenames.CONFIG, {**obj, "run_id": run_id, "config": c.to_dict(),
                                                      "created": float(obj.get("created") or 0) + i})
        out.append(folder)
    return out


def link_images(sources: list[Path], dest: Path, n: int) -> Path:
    """A folder of n image files, hard links (or copies) of sources taken in turn, named apart."""
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = sources[i % len(sources)]
        target = dest / f"{i:06d}-{src.name}"
        if not target.exists():
            _link(src, target)
    return dest


def timed_command(argv: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """A leukviz command in its own process: wall seconds and peak RSS (MB) of the child."""
    code = ("import json, resource, subprocess, sys, time\n"
            f"argv = {argv!r}\n"
            "t0 = time.perf_counter()\n"
            "p = subprocess.run([sys.executable, '-m', 'leukviz', *argv], stdout=subprocess.DEVNULL,"
            " stderr=subprocess.PIPE, text=True)\n"
            "wall = time.perf_counter() - t0\n"
            "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
            "print(json.dumps({'rc': p.returncode, 'seconds': round(wall, 3), 'peak_mb': round(rss, 1),"
            " 'err': p.stderr[-300:] if p.returncode else ''}))\n")
    t0 = time.perf_counter()
    here = str(Path(__file__).resolve().parents[2])  # the package's parent: the children import this leukviz
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": path, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-300:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"`leukviz {' '.join(argv)}` failed: {res['err']}")
    return {**res, "total_s": round(time.perf_counter() - t0, 3)}


def list_runs_scale(source: Path, sizes=LIST_SIZES, log: Log = print, work: Path | None = None) -> list[dict]:
    """`runs list --json` over an empty runs folder and over each size of cloned finished runs: seconds (the
    second call, summaries stored; the first call, which writes them, too) and the excess over the empty
    folder's start-up."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        empty = timed_command(["runs", "list", "--json", "--runs-dir", str(Path(tmp) / "empty")])
        root, rows, made = Path(tmp) / "runs", [], 0
        for n in sizes:
            clone_runs(source, root, n - made, start=made)
            made = n
            first = timed_command(["runs", "list", "--json", "--runs-dir", str(root)])
            again = timed_command(["runs", "list", "--json", "--runs-dir", str(root)])
            rows.append({"runs": n, "first_s": first["seconds"], "seconds": again["seconds"],
                         "over_empty_s": round(again["seconds"] - empty["seconds"], 3),
                         "peak_mb": again["peak_mb"]})
            log(f"runs list: {n} runs {again['seconds']:.2f}s (first call {first['seconds']:.2f}s; "
                f"empty folder {empty['seconds']:.2f}s)")
    return [{"runs": 0, "seconds": empty["seconds"], "peak_mb": empty["peak_mb"]}] + rows


def predict_scale(run_dir: Path, images: list[Path], sizes=PREDICT_SIZES, log: Log = print,
                  work: Path | None = None, batch_size: int = 0) -> list[dict]:
    """`predict` of one run on folders of each size (hard links of images), its table written with --csv:
    seconds, images per second and peak RSS of the predicting process."""
    rows = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        folder = Path(tmp) / "cells"
        for n in sizes:
            link_images(images, folder, n)
            argv = ["predict", "--run", run_dir.name, str(folder), "--runs-dir", str(run_dir.parent),
                    "--csv", str(Path(tmp) / "table.csv")] + (["--batch-size", str(batch_size)] if batch_size else [])
            res = timed_command(argv)
            lines = sum(1 for _ in open(Path(tmp) / "table.csv", "rb")) - 1
            if lines != n:
                raise RuntimeError(f"predict wrote {lines} rows for {n} files")
            rows.append({"files": n, "seconds": res["seconds"], "images_per_s": round(n / res["seconds"], 1),
                         "peak_mb": res["peak_mb"]})
            log(f"predict: {n} files {res['seconds']:.1f}s, peak {res['peak_mb']:.0f} MB")
    return rows


def index_scale(sizes=INDEX_SIZES, image_size: int = 64, log: Log = print) -> list[dict]:
    """Indexing and caching a C-NMC-layout stand-in of each size (bench.cache_memory, in a fresh process)."""
    from leukviz.benchmarks import bench

    rows = []
    for n in sizes:
        r = bench.cache_memory(n, image_size, log)
        rows.append({"files": n, "index_s": round(r["index_seconds"], 2), "cache_s": round(r["cache_seconds"], 2),
                     "peak_mb": round(r["peak_rss_mb"], 1), "cache_mb": round(r["cache_mb"], 1)})
        log(f"index + cache: {n} files: index {r['index_seconds']:.1f}s, cache {r['cache_seconds']:.1f}s, "
            f"peak {r['peak_rss_mb']:.0f} MB")
    return rows


def ratios(rows: list[dict], keys: tuple[str, ...], size_key: str) -> list[dict]:
    """Each row with, per key, its value as a ratio to the smallest size's (the first row)."""
    first = rows[0]
    return [{**r, **{f"{k}_x": round(r[k] / first[k], 2) if first[k] else None for k in keys},
             f"{size_key}_x": round(r[size_key] / first[size_key], 2)} for r in rows]


def run(run_dir: Path, images: list[Path], log: Log = print, quick: bool = False, work: Path | None = None) -> dict:
    """The scale section: listing, predicting and indexing at growing sizes, each as ratios to its smallest.
    quick: a tenth of each size (a smoke test of the section, not its figures)."""
    div = 10 if quick else 1
    listing = list_runs_scale(run_dir, tuple(n // div for n in LIST_SIZES), log, work)
    predict = predict_scale(run_dir, images, tuple(n // div for n in PREDICT_SIZES), log, work)
    index = index_scale(tuple(n // div for n in INDEX_SIZES), log=log)
    return {"list_runs": [listing[0]] + ratios(listing[1:], ("seconds",), "runs"),
            "predict": ratios(predict, ("seconds", "peak_mb"), "files"),
            "index_cache": ratios(index, ("index_s", "cache_s", "peak_mb"), "files")}


def format_table(res: dict) -> str:
    """The scale section as text: one line per size, the ratios to the smallest beside the figures."""
    lines = ["scale (ratios to the smallest size):"]
    empty = res["list_runs"][0]
    lines.append(f"  runs list, empty folder: {empty['seconds']:.2f}s")
    for r in res["list_runs"][1:]:
        lines.append(f"  runs list, {r['runs']:>5} runs: {r['seconds']:.2f}s ({r['seconds_x']}x for {r['runs_x']}x runs), "
                     f"{r['over_empty_s']:+.2f}s over the empty folder; first call {r['first_s']:.2f}s")
    for r in res["predict"]:
        lines.append(f"  predict, {r['files']:>6} files: {r['seconds']:.1f}s ({r['seconds_x']}x), peak {r['peak_mb']:.0f} MB "
                     f"({r['peak_mb_x']}x) for {r['files_x']}x files")
    for r in res["index_cache"]:
        lines.append(f"  index + cache, {r['files']:>6} files: index {r['index_s']:.1f}s ({r['index_s_x']}x), cache "
                     f"{r['cache_s']:.1f}s ({r['cache_s_x']}x), peak {r['peak_mb']:.0f} MB ({r['peak_mb_x']}x) "
                     f"for {r['files_x']}x files")
    return "\n".join(lines)
