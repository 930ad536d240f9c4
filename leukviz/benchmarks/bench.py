"""Speed benchmark (`python -m leukviz bench [--quick]`): the plain hand-written PyTorch loop (training/plain.py,
the one the studies train) against leukviz's training paths, in one process, on the same images, model, image
size, batch size and threads; achieved training GFLOP/s against this machine's measured matmul peak;
single-image prediction latency; peak memory of caching a C-NMC-sized set. This module runs them in order and
says how they were measured; each measurement is its own module (settings, benchdata, timing, roofline,
latency, memory with its child process memchild, table, precision). docs/BENCHMARKS.md holds the results.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from leukviz.benchmarks.benchdata import BenchData, bench_data, cold_cache, plain_dataset, plain_loader
from leukviz.benchmarks.latency import predict_latency
from leukviz.benchmarks.memory import cache_memory, make_standin
from leukviz.benchmarks.precision import precision_accuracy
from leukviz.benchmarks.roofline import matmul_peak, train_step_flops
from leukviz.benchmarks.settings import (
    CNMC_SETS,
    CNMC_SIZE,
    HEAD_EPOCHS,
    QUICK_MEMORY_FILES,
    BenchConfig,
    Log,
    precision_name,
    run_config,
)
from leukviz.benchmarks.table import format_table
from leukviz.benchmarks.timing import (
    ABLATION_ALLOCATOR,
    ABLATION_FREEZE_BN,
    ABLATION_STEPS,
    ablations,
    bench_leukviz,
    bench_plain,
    build,
    time_head_fast,
    time_leukviz,
    time_plain,
)
from leukviz.models import backbones, devices

__all__ = ["ABLATION_ALLOCATOR", "ABLATION_FREEZE_BN", "ABLATION_STEPS", "CNMC_SETS", "CNMC_SIZE", "HEAD_EPOCHS",
           "QUICK_MEMORY_FILES", "BenchConfig", "BenchData", "ablations", "bench_data", "build", "cache_memory",
           "format_table", "machine", "make_standin", "plain_dataset", "plain_loader", "precision_accuracy",
           "run", "run_config", "run_notes", "time_head_fast", "time_leukviz", "time_plain", "train_step_flops"]


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "bf16_matrix_instructions": devices.cpu_has_bf16(), "load_average_1min": load,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run_notes(bc: BenchConfig, info: dict) -> list[str]:
    """What a reader of the results must know about how they were measured."""
    notes = []
    if info["load_average_1min"] is not None and info["load_average_1min"] > 0.5 + (os.cpu_count() or 1) * 0.75:
        notes.append(f"the machine was busy (1-minute load average {info['load_average_1min']:.1f} on "
                     f"{os.cpu_count()} cores): timings are pessimistic and noisy")
    if bc.quick:
        notes.append(f"--quick: batch {bc.batch} (the full run's is 32: docs/BENCHMARKS.md); plain loop "
                     f"{bc.warmup_plain} warm-up batch, then batches for at least {bc.min_seconds_plain:g}s; leukviz "
                     f"{bc.warmup_leukviz} warm-up batches, then at least {bc.timed_leukviz} batches and "
                     f"{bc.min_seconds_leukviz:g}s; extrapolated to epochs; last-stage fine-tuning skipped; the "
                     f"head-only feature pass timed on {bc.feature_part} images and extrapolated; plain DataLoader "
                     f"num_workers={bc.workers[0]} only; memory on a {bc.n_memory_files}-file stand-in")
    if bc.weights != "imagenet":
        notes.append(f"weights {bc.weights}: speed does not depend on the weights' values")
    return notes


def run(bc: BenchConfig, cache_dir: Path | None = None, log: Log = lambda s: print(s, file=sys.stderr)) -> dict:
    """Measure everything bc asks for; returns one JSON-able dict (see format_table for the human form).

    Order: every plain-loop measurement first, in the process's default state; then what engine.setup does
    to the process (the allocator tuning) and leukviz's paths; then latency and memory."""
    if bc.threads:
        torch.set_num_threads(bc.threads)
    device = devices.pick_device(bc.device)
    t_start = time.time()
    info = machine()
    notes = run_notes(bc, info)
    for name in bc.backbones:
        backbones.ensure_weights(name, bc.weights)
    log(f"bench on {devices.device_name(device)}, {bc.image_size}px, batch {bc.batch}, "
        f"{'quick' if bc.quick else 'full'}")
    bd = bench_data(bc.data, bc.fold, cache_dir)
    log(f"  data: {bd.n} images of {bd.folder} (ImageFolder and leukviz read the same files)")

    images, cache_seconds = cold_cache(bc, bd)
    log(f"  decode once into the cache: {cache_seconds:.2f}s ({bd.n / cache_seconds:.0f} img/s)")

    lv_amp = devices.autocast_dtype(bc.precision, device)
    sizes = (8192,) if device.type == "cuda" else (1024, 2048) if bc.quick else (1024, 2048, 4096)
    reps = 10 if device.type == "cuda" else 3 if bc.quick else 5
    peaks = {"fp32": matmul_peak(torch.float32, device, sizes, reps)}
    if lv_amp is not None:
        peaks[precision_name(lv_amp)] = matmul_peak(lv_amp, device, sizes, reps)
    log("  matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))

    inits = {name: build(run_config(bc, name, "full"), bc.seed) for name in bc.backbones}
    per = {name: bench_plain(bc, name, bd, inits[name], device, log) for name in bc.backbones}
    steps = ablations(bc, images, bd.labels, inits, device, log) if bc.ablation else {}
    allocator = devices.tune_cpu_allocator() if device.type == "cpu" else False
    for name in bc.backbones:
        bench_leukviz(bc, name, bd, images, inits[name], device, cache_seconds, per[name], log)

    latency = predict_latency(bc, bd.paths[0], device, 15 if bc.quick else 40, log, inits) if bc.latency else {}
    del inits
    memory = cache_memory(bc.n_memory_files, 128, log) if bc.n_memory_files > 0 else {}
    if memory:
        log(f"  peak RSS indexing + caching {memory['files']} files at 128px: {memory['peak_rss_mb']:.0f} MB")
    # the peak again at the end: the larger of the two, so a busy moment cannot inflate the fractions
    peaks = {k: max(v, matmul_peak(torch.float32 if k == "fp32" else lv_amp, device, sizes, reps))
             for k, v in peaks.items()}
    for r in per.values():
        r["peak_gflops"] = peaks[r["leukviz_full"]["precision"]]
        r["roofline_fraction"] = r["gflops_full"] / r["peak_gflops"]
        r["plain_roofline_fraction"] = r["gflops_plain"] / peaks["fp32"]

    cfg_dict = asdict(bc)
    cfg_dict.update(batch_size=bc.batch, warmup_plain=bc.warmup_plain, timed_plain=bc.timed_plain,
                    warmup_leukviz=bc.warmup_leukviz, timed_leukviz=bc.timed_leukviz, plain_workers=list(bc.workers),
                    min_seconds_plain=bc.min_seconds_plain, min_seconds_leukviz=bc.min_seconds_leukviz)
    res = {
        "machine": info, "config": cfg_dict, "device": devices.device_name(device), "notes": notes,
        "allocator_tuned": allocator,
        "data": {"folder": str(bd.folder), "n_images": bd.n, "cache_seconds": cache_seconds},
        "matmul_peak_gflops": peaks, "backbones": per, "ablation": steps,
        "speedup_full_vs_plain": {k: v["speedup_full_vs_plain"] for k, v in per.items()},
        "speedup_last_vs_plain": {k: v["speedup_last_vs_plain"] for k, v in per.items() if "leukviz_last" in v},
        "speedup_head_vs_plain": {k: v["speedup_head_vs_plain"] for k, v in per.items()},
        "roofline_fraction": {k: v["roofline_fraction"] for k, v in per.items()},
        "latency": latency,
        "predict_all_p95_ms": latency.get("all", {}).get("p95_ms"),
        "memory": memory, "peak_rss_mb": memory.get("peak_rss_mb"),
        "seconds": time.time() - t_start,
    }
    if info["load_average_1min"] is not None:
        res["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    return res
