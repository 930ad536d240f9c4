"""Measure the health rule (leukviz/scoring/health.py) both ways: train deliberately broken runs, which it must
flag, and ordinary runs (the kinds a user trains: backbones, seeds, sizes, epochs, presets), which it must not;
then tabulate every run's figures and verdict (docs/HEALTH.md holds the result).

    flock /work/measure.lock .venv/bin/python scripts/health_check.py train    # trains what is missing
    .venv/bin/python scripts/health_check.py table                             # the markdown table

Runs go to $LEUKVIZ_HOME/runs (set LEUKVIZ_HOME to a scratch folder); a configuration already trained is
cached, so `train` resumes where it stopped. DATA (default ../shared/data/cnmc-fold1-dev) is the real folder.
A one-class-validation folder (train/all, train/hem, val/all as links into DATA) is made under $LEUKVIZ_HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEV = os.environ.get("DATA", str(REPO.parent / "shared" / "data" / "cnmc-fold1-dev"))


def home() -> Path:
    return Path(os.environ.get("LEUKVIZ_HOME", "/tmp/leukviz-health-home"))


def one_class_val(base: Path) -> Path:
    """train/{all,hem} and val/all (no hem) linked from DATA's class folders: a validation of one class."""
    root = home() / "one-class-val"
    if root.exists():
        return root
    for cls in ("all", "hem"):
        files = sorted((Path(DEV) / cls).iterdir())
        cut = len(files) * 4 // 5
        (root / "train" / cls).mkdir(parents=True)
        for f in files[:cut]:
            (root / "train" / cls / f.name).symlink_to(f)
        if cls == "all":
            (root / "val" / cls).mkdir(parents=True)
            for f in files[cut:]:
                (root / "val" / cls / f.name).symlink_to(f)
    return root


def run(data: str, backbone: str, size: int, epochs: int, *extra: str) -> list[str]:
    return ["--data", data, "--backbone", backbone, "--image-size", str(size), "--epochs", str(epochs), *extra]


def plan() -> list[tuple[str, str, list[str]]]:
    """(kind, label, CLI arguments) of every run, cheapest and most telling first (a run on a busy machine can
    take minutes): the broken ones, then ordinary ones, the kinds a user trains (backbones, seeds, sizes,
    epochs, presets, splits), cheap (32-64 px, 1-3 epochs, from scratch)."""
    tags = {DEV: "dev", "demo": "demo"}
    out = []
    for data in (DEV, "demo"):
        out.append(("broken", f"{tags[data]} googlenet lr 1e-7", run(data, "googlenet", 32, 1, "--lr", "1e-7")))
        out.append(("broken", f"{tags[data]} googlenet lr 1.0", run(data, "googlenet", 32, 1, "--lr", "1.0")))
    # A val/ folder of one class: the loader now falls back to a subject split (both classes validated), so
    # this is an ordinary run; a one-class validation, were it made, is `unknown` (tests/test_health.py).
    out.append(("ordinary", "one-class validation (val/ all only)", run("ONECLASS", "googlenet", 32, 1)))
    later = []
    for data in (DEV, "demo"):
        later.append(("broken", f"{tags[data]} resnet50 lr 1e-7", run(data, "resnet50", 32, 1, "--lr", "1e-7")))
        later.append(("broken", f"{tags[data]} resnet50 lr 1.0", run(data, "resnet50", 32, 1, "--lr", "1.0")))
    ordinary = []
    for data in (DEV, "demo"):
        t = tags[data]
        ordinary += [
            (f"{t} googlenet quick 32px 1ep", run(data, "googlenet", 32, 1)),
            *[(f"{t} googlenet quick 32px 2ep seed {s}", run(data, "googlenet", 32, 2, "--seed", str(s)))
              for s in (0, 1, 2)],
            (f"{t} resnet50 quick 32px 1ep", run(data, "resnet50", 32, 1)),
            (f"{t} googlenet quick 48px 1ep", run(data, "googlenet", 48, 1)),
            (f"{t} googlenet paper 32px 2ep", run(data, "googlenet", 32, 2, "--preset", "paper")),
            (f"{t} googlenet quick 32px 1ep image split", run(data, "googlenet", 32, 1, "--split", "image")),
            *[(f"{t} resnet50 quick 32px 2ep seed {s}", run(data, "resnet50", 32, 2, "--seed", str(s)))
              for s in (0, 1, 2)],
            (f"{t} resnet50 paper 32px 2ep", run(data, "resnet50", 32, 2, "--preset", "paper")),
            (f"{t} vgg16 quick 32px 1ep", run(data, "vgg16", 32, 1)),
            (f"{t} resnet50 quick 48px 1ep", run(data, "resnet50", 48, 1)),
            (f"{t} googlenet quick 64px 3ep", run(data, "googlenet", 64, 3)),
            (f"{t} resnet50 quick 64px 3ep", run(data, "resnet50", 64, 3)),
        ]
    # dev and demo in turn, so that a measurement cut short still covers both
    half = len(ordinary) // 2
    for a, b in zip(ordinary[:half], ordinary[half:]):
        out += [("ordinary", *a), ("ordinary", *b)]
        if len(out) == 25:  # ResNet50's broken runs after the first ordinary ones
            out += later
    return out


def train() -> None:
    results = home() / "health_runs.json"
    done = json.loads(results.read_text()) if results.exists() else {}
    for kind, label, args in plan():
        if label in done:
            continue
        args = [str(one_class_val(home())) if a == "ONECLASS" else a for a in args]
        cmd = [sys.executable, "-m", "leukviz", "train", "--weights", "none", "--json", *args]
        print(label, flush=True)
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        try:
            out = json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            print("  failed:", p.stderr[-500:], flush=True)
            continue
        done[label] = {"kind": kind, "run_dir": out.get("run_dir"), "run_id": out.get("run_id")}
        results.write_text(json.dumps(done, indent=1))


def figures(run_dir: Path) -> dict:
    """The figures the rule reads (health.evidence) and its verdict (health.of_run_dir)."""
    from leukviz.runstore import runs
    from leukviz.scoring import calibration, health

    run = runs.Run(run_dir)
    out = {"state": run.state, "health": "failed", "reasons": run.status.get("error") or "", "n": 0, "subjects": 0}
    if run.state != runs.State.FINISHED:
        return out
    y, p, classes, subjects = calibration.validation_cells(run_dir, (run_dir / "val_predictions.csv").read_bytes(),
                                                           subjects=True)
    h = health.of_run_dir(run_dir)
    out.update(n=len(y), subjects=len(set(subjects)), health=h.status, reasons="; ".join(h.reasons),
               acc=float((p.argmax(1) == y).mean()), majority=float(np.bincount(y).max() / len(y)))
    if len(np.unique(y)) > 1:
        e = health.evidence(y, p, classes, subjects)
        out.update(bal_acc=e["balanced_accuracy"], auc=e["auc"], auc_low=e["auc_low"], auc_high=e["auc_high"])
    return out


def fmt(v, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.1%}" if pct else f"{v:.3f}"


def table(extra: list[str]) -> None:
    """The markdown table: every run of health_runs.json, and (extra) any other run folders found, as ordinary
    runs someone trained (their label from their config)."""
    from leukviz.runstore import names, runs

    results = json.loads((home() / "health_runs.json").read_text())
    rows = {"broken": [], "ordinary": []}
    kinds = {label: kind for kind, label, _ in plan()}  # the plan's kind, should it have changed since training
    for label, r in results.items():
        rows[kinds.get(label, r["kind"])].append((label, figures(Path(r["run_dir"]))))
    for folder in extra:
        for run in runs.list_runs(folder):
            c = run.config
            label = (f"{names.dataset_label(c.data)} {c.backbone} {c.preset} {c.image_size}px {c.epochs}ep lr {c.lr:g} "
                     f"seed {c.seed} (found in {folder})")
            rows["ordinary"].append((label, figures(run.dir)))
    flagged = lambda f: f["health"] != "healthy"  # noqa: E731
    caught = sum(flagged(f) for _, f in rows["broken"])
    alarms = sum(flagged(f) for _, f in rows["ordinary"])
    print(f"Broken runs flagged: **{caught} of {len(rows['broken'])}**. Ordinary runs flagged (false alarms): "
          f"**{alarms} of {len(rows['ordinary'])}**.\n")
    print("| run | kind | val. cells (subjects) | accuracy | majority share | balanced acc. | ROC AUC [95 % "
          "interval over subjects] | health | reason |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in ("broken", "ordinary"):
        for label, f in rows[kind]:
            auc = f"{fmt(f.get('auc'))} [{fmt(f.get('auc_low'))}, {fmt(f.get('auc_high'))}]" if "auc" in f else "–"
            verdict = f"**{f['health']}**" if flagged(f) else f["health"]
            reasons = str(f["reasons"]).replace("|", "/").replace("\n", " ")[:300]
            print(f"| {label} | {kind} | {f['n']} ({f['subjects']}) | {fmt(f.get('acc'), True)} | "
                  f"{fmt(f.get('majority'), True)} | {fmt(f.get('bal_acc'))} | {auc} | {verdict} | {reasons} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("train", "table"))
    ap.add_argument("--extra-runs", nargs="*", default=[], help="table: other runs folders to include as ordinary")
    args = ap.parse_args()
    train() if args.what == "train" else table(args.extra_runs)
