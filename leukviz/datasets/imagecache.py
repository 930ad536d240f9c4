"""The decoded image cache: every indexed image decoded once, on threads, into a memory-mapped uint8 array
keyed by the dataset fingerprint; files that cannot be used (unreadable, one image under two labels) are
dropped with their reason; check_decoded: what a split keeps of it."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from leukviz.core import filenames
from leukviz.core.storage import atomic_write_bytes
from leukviz.datasets.cachedir import cache_folder, writable
from leukviz.datasets.dataset import DataError, Dataset
from leukviz.datasets.decode import CELL_WINDOW, ImageError, load_image
from leukviz.datasets.splits import Split


class CacheInterrupted(Exception):
    """The image cache's build was asked to stop (Ctrl-C, a stop request); nothing of it is kept."""


def _decode_into(arr: np.ndarray, items: list[tuple[int, str]], size: int, crop: bool, window: float | None,
                 halt: Callable[[], bool]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Decode items into arr; returns (failed (row, reason), digests (row, content hash)). Returns early once
    halt is set (the build is being stopped)."""
    failed, digests = [], []
    for i, path in items:
        if halt():
            break
        try:
            blob = Path(path).read_bytes()
        except OSError as e:
            failed.append((i, f"{Path(path).name}: cannot be read ({e.strerror or e.__class__.__name__})"))
            continue
        digests.append((i, hashlib.sha256(blob).hexdigest()))
        buf = io.BytesIO(blob)
        buf.name = path
        try:
            arr[i] = load_image(buf, size, crop, window)
        except ImageError as e:
            failed.append((i, str(e)))
    return failed, digests


def _conflicting_duplicates(ds: Dataset, digests: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Rows whose exact file content appears under two different labels.

    All copies are dropped, not one kept: nothing says which label is right, and a copy on each side of
    the split would let the model be scored on an image it trained on.
    """
    labels = ds.index["label"].to_numpy()
    names = ds.index["path"].map(lambda p: Path(p).name).to_numpy()
    by_hash: dict[str, list[int]] = {}
    for i, digest in digests:
        if labels[i] >= 0:
            by_hash.setdefault(digest, []).append(i)
    out = []
    for rows in by_hash.values():
        if len({int(labels[r]) for r in rows}) > 1:
            where = ", ".join(f"{names[r]} ({ds.classes[labels[r]]})" for r in rows)
            out.extend((r, f"same image in two classes: {where}; all copies dropped") for r in rows)
    return out


def _add_skipped(ds: Dataset, rows: list[tuple[int, str]]) -> None:
    known = set(ds.skipped)
    for i, reason in rows:
        item = (str(ds.index["path"].iloc[i]), reason)
        if item not in known:
            ds.skipped.append(item)
            known.add(item)


def _reserve(path: Path, nbytes: int) -> None:
    """Allocate the cache file's blocks now: on a full disk this is a clear error, whereas writing into a
    sparse memory map would kill the process with SIGBUS half-way."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"not enough disk space for the image cache: {nbytes / 1e9:.2f} GB needed in "
                            f"{path.parent} ({e.strerror})") from None
    finally:
        os.close(fd)


def _decode_all(arr: np.ndarray, paths: list[tuple[int, str]], size: int, crop: bool, window: float | None,
                workers: int, progress: Callable[[int, int], None] | None,
                should_stop: Callable[[], bool] | None) -> tuple[list, list]:
    """Decode every path into arr on threads. Ctrl-C or should_stop() stops it within an image per thread
    (CacheInterrupted, or the KeyboardInterrupt itself), not when every queued chunk has run."""
    n = len(paths)
    chunk = max(16, min(256, n // (workers * 4) + 1))
    jobs = [paths[i:i + chunk] for i in range(0, n, chunk)]
    failed: list[tuple[int, str]] = []
    digests: list[tuple[int, str]] = []
    done, halted = 0, threading.Event()
    halt = lambda: halted.is_set() or bool(should_stop and should_stop())  # noqa: E731
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for (bad, dig), job in zip(pool.map(lambda j: _decode_into(arr, j, size, crop, window, halt), jobs), jobs):
            failed.extend(bad)
            digests.extend(dig)
            done += len(job)
            if progress:
                progress(done, n)
            if should_stop is not None and should_stop():
                raise CacheInterrupted(f"stopped while building the image cache ({done} of {n} images decoded)")
    finally:
        halted.set()  # a no-op when all is done; otherwise the threads stop at their next image
        pool.shutdown(wait=True, cancel_futures=True)
    return failed, digests


def _cached_images(ds: Dataset, stem: Path, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A complete image cache at stem (its images, ok and reasons added to ds.skipped), or None."""
    data_path, ok_path, why_path = Path(f"{stem}.npy"), Path(f"{stem}.ok.npy"), Path(f"{stem}.skipped.json")
    n = len(ds.index)
    if not (data_path.exists() and ok_path.exists() and why_path.exists()):
        return None
    try:  # a damaged cache (a crash, a full disk) is rebuilt, never fatal
        ok, why = np.load(ok_path), json.loads(why_path.read_text())
        images = np.load(data_path, mmap_mode="r")
        if len(ok) == n and images.shape == (n, size, size, 3):
            _add_skipped(ds, [(int(i), str(r)) for i, r in why])
            return images, ok
    except (OSError, ValueError, TypeError):
        pass
    return None


def image_cache(ds: Dataset, size: int, crop: bool, cache_dir: Path | None = None, workers: int | None = None,
                progress: Callable[[int, int], None] | None = None, window: float | None = CELL_WINDOW,
                should_stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode every indexed image once into a memory-mapped uint8 array (N, size, size, 3).

    Returns (images, ok): ok[i] is False for files that could not be decoded, and for the same image
    found under two labels (see _conflicting_duplicates); each is skipped and its reason added to
    ds.skipped, also when the cache is reused. Keyed by the dataset fingerprint, so a changed dataset
    never reuses a stale cache. Threads, not processes: Pillow releases the GIL while decoding and
    resizing, and forking a process that runs torch can deadlock.
    """
    folder = cache_folder(cache_dir) / filenames.IMAGE_CACHE
    how = ("cell" if window is None else f"window{round(window * 1000)}") if crop else "full"
    name = f"{ds.fingerprint}-{size}-{how}"
    cached = _cached_images(ds, folder / name, size)  # a read-only cache is still read
    if cached is not None:
        return cached
    stem = writable(folder) / name
    if stem.parent != folder and (cached := _cached_images(ds, stem, size)) is not None:
        return cached
    data_path, ok_path, why_path = Path(f"{stem}.npy"), Path(f"{stem}.ok.npy"), Path(f"{stem}.skipped.json")
    n = len(ds.index)
    tmp = Path(f"{stem}.{os.getpid()}.tmp.npy")
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        _reserve(tmp, tmp.stat().st_size)
        failed, digests = _decode_all(arr, list(enumerate(ds.index["path"])), size, crop, window,
                                      workers or min(os.cpu_count() or 1, 4), progress, should_stop)
        arr.flush()
        del arr
        failed.extend(_conflicting_duplicates(ds, digests))
        ok = np.ones(n, dtype=bool)
        for i, _ in failed:
            ok[i] = False
        _add_skipped(ds, failed)
        buf = io.BytesIO()
        np.save(buf, ok)
        # ok and the reasons first, the images last: the images file is what marks the cache complete
        atomic_write_bytes(ok_path, buf.getvalue())
        atomic_write_bytes(why_path, json.dumps(sorted(failed)).encode())
        os.replace(tmp, data_path)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(data_path, mmap_mode="r"), ok


def check_decoded(ds: Dataset, split: Split, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The split's rows that decoded (ok), after the image cache dropped unreadable files and cross-class
    copies; a DataError when a side has lost a class, naming the class and why its files were dropped
    (the count before decoding cannot see a folder of empty files, or one class linked to the other)."""
    labels = ds.index["label"].to_numpy()
    why = {p: r for p, r in ds.skipped}
    out = []
    for side, rows in (("training", split.train), ("validation", split.val)):
        kept = rows[ok[rows]]
        for c in sorted(set(labels[rows]) - set(labels[kept])):
            lost = rows[labels[rows] == c]
            reasons = [why.get(str(ds.index["path"].iloc[i]), "not readable") for i in lost[:3]]
            raise DataError(f"class {ds.classes[c]!r} has no usable {side} images: all {len(lost)} of them were "
                            f"dropped ({'; '.join(reasons)}{'; ...' if len(lost) > 3 else ''}). A classifier needs "
                            "images of every class on both sides; fix or replace those files")
        out.append(kept)
    if len(out[0]) == 0 or len(out[1]) == 0:
        raise DataError("no readable images on one side of the split")
    return out[0], out[1]
