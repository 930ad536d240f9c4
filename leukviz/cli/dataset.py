"""python -m leukviz data inspect: images per class, fold and subject, the held-out test set, warnings."""

from __future__ import annotations

import argparse
import json

from leukviz.core import paths


def cmd_data(args) -> int:
    from leukviz.datasets import data

    ds = data.open_dataset(args.path, paths.cache_root())
    info = data.inspect(ds)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['kind']} dataset at {info['root']}: {info['n_train']} training images, classes {info['classes']}")
    print("  per class: " + ", ".join(f"{k} {v}" for k, v in info["per_class"].items()))
    for fold, counts in info["per_fold"].items():
        print(f"  fold {fold}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"  subjects: {len(info['per_subject'])} (" +
          ", ".join(f"{s}:{v['n']}" for s, v in info["per_subject"].items()) + ")")
    if info["subjects_per_class"]:
        print("  subjects per class: " + ", ".join(f"{k} {v}" for k, v in info["subjects_per_class"].items()))
    for w in info["warnings"]:
        print(f"  warning: {w}")
    test = info["test"]
    print(f"  held-out test set (labelled): {test['n']}"
          + (" (" + ", ".join(f"{k} {v}" for k, v in test["per_class"].items()) + ")" if test["n"] else "")
          + (f"; C-NMC final test (unlabeled): {info['final_unlabeled']}" if info["kind"] == "cnmc" else ""))
    if ds.skipped:
        print(f"  skipped {data.skipped_text(ds.skipped)}")
    return 0


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The data commands: inspect."""
    d = sub.add_parser("data", help="inspect a dataset")
    ds = d.add_subparsers(dest="data_command", required=True)
    di = ds.add_parser("inspect", parents=[common], help="images per class, fold and subject")
    di.add_argument("path", help="demo, a C-NMC folder, a class-per-folder tree or a .zip")
    di.set_defaults(func=cmd_data)
