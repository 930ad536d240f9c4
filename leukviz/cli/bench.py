"""python -m leukviz bench: speed of the plain PyTorch loop against leukviz's paths, or --accuracy of fp32
against bf16 (leukviz.benchmarks, which nothing but the CLI imports)."""

from __future__ import annotations

import argparse
import json
import sys

from leukviz.cli.common import _device_value, _out
from leukviz.core import paths
from leukviz.models import config as C


def cmd_bench(args) -> int:
    """Speed: the plain hand-written loop against leukviz's paths, measured in one process (see leukviz/bench.py)."""
    from leukviz.benchmarks import bench

    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    if args.scale:
        return _bench_scale(args, log)
    if args.accuracy:
        names = [args.backbone] if args.backbone else ["googlenet"]
        rows = [r for nm in names for r in bench.precision_accuracy(
            nm, args.image_size or 64, args.epochs, tuple(range(args.seeds)), data_spec=args.data,
            cache_dir=paths.cache_root(), log=log)]
        _out(args, "\n".join(f"{r['backbone']} seed {r['seed']} {r['precision']}: val acc {r['val_acc']:.4f}, "
                             f"F1 {r['val_f1']:.4f}, {r['seconds']:.0f}s" for r in rows), {"accuracy": rows})
        return 0
    bc = bench.BenchConfig(
        backbones=(args.backbone,) if args.backbone else bench.BenchConfig.backbones,
        image_size=args.image_size or 128, batch_size=args.batch_size, data=args.data, fold=args.fold,
        quick=args.quick, device=args.device, precision=args.precision, weights=args.weights,
        threads=args.threads, plain_workers=tuple(args.plain_workers or ()), memory_files=args.memory_files,
        latency=not args.no_latency, ablation=args.ablation)
    res = bench.run(bc, paths.cache_root(), log)
    print(bench.format_table(res))
    if args.json:
        print(json.dumps(res, default=str))
    return 0


def _bench_scale(args, log) -> int:
    """bench --scale RUN_ID --scale-images FOLDER: how listing, predicting and indexing grow (benchmarks.scale)."""
    from pathlib import Path

    from leukviz.benchmarks import scale
    from leukviz.cli.common import CliError
    from leukviz.datasets import data
    from leukviz.runstore import runs

    run = runs.get_run(args.scale, args.runs_dir)
    if not run.is_usable:
        raise CliError(f"run {run.run_id} is not a finished, sound run: the scale section clones and predicts with one")
    folder = Path(args.scale_images or "")
    images = sorted(f for f in folder.rglob("*") if f.is_file() and data.is_image(f)) if folder.is_dir() else []
    if not images:
        raise CliError("give --scale-images FOLDER: a folder of cell images to link into the predict folders")
    res = scale.run(run.dir, images, log, quick=args.quick)
    _out(args, scale.format_table(res), {"scale": res})
    return 0


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The bench command: speed of the plain PyTorch loop against leukviz's paths."""
    from leukviz.models.backbones import BACKBONES

    be = sub.add_parser("bench", parents=[common], help="measure speed: the plain PyTorch loop vs leukviz's paths")
    be.add_argument("--quick", action="store_true", help="a few batches per path, extrapolated (under a minute)")
    be.add_argument("--backbone", choices=list(BACKBONES), help="one backbone (default: all)")
    be.add_argument("--image-size", type=int, help="pixels (default 128; 64 with --accuracy)")
    be.add_argument("--batch-size", type=int, default=0, help="default 32 (16 with --quick)")
    be.add_argument("--data", default="demo", help="demo, or a C-NMC folder / class-per-folder tree")
    be.add_argument("--fold", type=int, default=0, help="the training_data/fold_<k> folder both paths read")
    be.add_argument("--device", default="auto", type=_device_value, help="auto | cpu | cuda | cuda:N | mps")
    be.add_argument("--precision", choices=C.PRECISIONS, default="auto", help="leukviz's paths (plain is fp32)")
    be.add_argument("--weights", default="none", help="none (default; speed does not depend on it) | imagenet")
    be.add_argument("--threads", type=int, default=0, help="torch threads (default: one per core)")
    be.add_argument("--plain-workers", type=int, nargs="+", help="DataLoader num_workers to try for the plain loop")
    be.add_argument("--memory-files", type=int, default=0,
                    help="files in the memory stand-in (default 15135, 1000 with --quick; -1 skips)")
    be.add_argument("--no-latency", action="store_true", help="skip the prediction latency")
    be.add_argument("--ablation", action="store_true",
                    help="also time full fine-tuning with each speed-up added in turn (NCHW fp32, channels-last, "
                         "bf16, allocator)")
    be.add_argument("--accuracy", action="store_true",
                    help="instead: train from scratch in fp32 and bf16 and compare validation accuracy")
    be.add_argument("--epochs", type=int, default=3, help="with --accuracy")
    be.add_argument("--seeds", type=int, default=2, help="with --accuracy: seeds 0..N-1")
    be.add_argument("--scale", metavar="RUN_ID",
                    help="instead: how costs grow (runs list at 10/100/1,000 runs cloned from this finished run, "
                         "predict at 2k/20k/50k files, index + cache at 15k/100k files), as ratios to the smallest")
    be.add_argument("--scale-images", metavar="FOLDER", help="with --scale: cell images to link into predict folders")
    be.set_defaults(func=cmd_bench)
