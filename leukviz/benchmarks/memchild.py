"""The memory measurement's child process (`python -m leukviz.benchmarks.memchild ROOT CACHE SIZE`): a fresh
process that indexes a dataset (open_dataset) and decodes it into the image cache, then prints one JSON line of
its peak resident memory (VmHWM) at each stage and the seconds each took. memory.cache_memory starts it."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def hwm() -> float:
    """Peak resident memory of this process in MB (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(root: str, cache: Path, size: int) -> dict:
    from leukviz.datasets import data

    base = hwm()  # the interpreter with leukviz's data layer imported, before any dataset

    t = time.time()
    ds = data.open_dataset(root, cache)
    indexed = hwm()
    t_index = time.time() - t
    t = time.time()
    images, ok = data.image_cache(ds, size, True, cache)
    t_cache = time.time() - t
    return {"n": len(ds.index), "ok": int(ok.sum()), "baseline_mb": base, "after_index_mb": indexed,
            "peak_rss_mb": hwm(), "index_seconds": t_index, "cache_seconds": t_cache,
            "cache_mb": images.nbytes / 2**20}


def main(argv: list[str]) -> int:
    root, cache, size = argv
    print(json.dumps(measure(root, Path(cache), int(size))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
