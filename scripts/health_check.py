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


def ordinary() -> list[tuple[str, list[str]]]:
    """(label, CLI arguments) of the ordinary runs: cheap (32-64 px, 1-3 epochs), mostly from scratch."""
    out = []
    for data in (DEV, "demo"):
        tag = "dev" if data == DEV else "demo"
        for backbone in ("googlenet", "resnet50"):
            for seed in (0, 1, 2):
                out.append((f"{tag} {backbone} quick 32px 2ep seed {seed}",
                            ["--data", data, "--backbone", backbone, "--image-size", "32", "--epochs", "2",
                             "--seed", str(seed)]))
            out.append((f"{tag} {backbone} quick 32px 1ep", ["--data", data, "--backbone", backbone,
                                                           "--image-size", "32", "--epochs", "1"]))
            out.append((f"{tag} {backbone} quick 48px 1ep", ["--data", data, "--backbone", backbone,
                                                           "--image-size", "48", "--epochs", "1"]))
            out.append((f"{tag} {backbone} quick 64px 3ep", ["--data", data, "--backbone", backbone,
                                                           "--image-size", "64", "--epochs", "3"]))
            out.append((f"{tag} {backbone} paper 32px 2ep", ["--data", data, "--backbone", backbone,
                                                           "--preset", "paper", "--image-size", "32",
                                                           "--epochs", "2"]))
        out.append((f"{tag} vgg16 quick 32px 1ep", ["--data", data, "--backbone", "vgg16", "--image-size", "32",
                                                     "--epochs", "1"]))
        out.append((f"{tag} googlenet quick 32px 1ep image split", ["--data", data, "--backbone", "googlenet",
                                                                     "--image-size", "32", "--epochs", "1",
                                                                     "--split", "image"]))
    return out


def broken() -> list[tuple[str, list[str]]]:
    """(label, CLI arguments) of the deliberately broken runs."""
    out = []
    for data in (DEV, "demo"):
        tag = "dev" if data == DEV else "demo"
        for backbone in ("googlenet", "resnet50"):
            out.append((f"{tag} {backbone} lr 1e-7", ["--data", data, "--backbone", backbone, "--image-size", "32",
                                                      "--epochs", "1", "--lr", "1e-7"]))
            out.append((f"{tag} {backbone} lr 1.0", ["--data", data, "--backbone", backbone, "--image-size", "32",
                                                     "--epochs", "1", "--lr", "1.0"]))
        out.append((f"{tag} googlenet lr 1e-7 3 seeds", ["--data", data, "--backbone", "googlenet",
                                                         "--image-size", "32", "--epochs", "1", "--lr", "1e-7",
                                                         "--seed", "5"]))
    out.append(("one-class validation (val/ all only)", ["--data", "ONECLASS", "--backbone", "googlenet",
                                                         "--image-size", "32", "--epochs", "1"]))
    return out


def train() -> None:
    results = home() / "health_runs.json"
    done = json.loads(results.read_text()) if results.exists() else {}
    for kind, runs in (("broken", broken()), ("ordinary", ordinary())):
        for label, args in runs:
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
    """The figures the rule reads, and its verdict."""
    from leukviz.scoring import calibration, health, metrics

    y, p, classes = calibration.validation_cells(run_dir, (run_dir / "val_predictions.csv").read_bytes())
    subjects = health.validation_subjects(run_dir)
    h = health.of_run_dir(run_dir)
    pred = p.argmax(1)
    share = np.bincount(y, minlength=len(classes)).max() / len(y)
    out = {"n": len(y), "acc": metrics.accuracy(y, pred), "majority": share,
           "bal_acc": metrics.balanced_accuracy(y, pred), "health": h.status, "reasons": "; ".join(h.reasons),
           "subjects": len(set(subjects)) if subjects is not None else 0}
    if len(np.unique(y)) > 1:
        b = metrics.subject_bootstrap(y, p, classes, subjects, scores=("roc_auc",), n_resamples=health.RESAMPLES)
        auc = b["scores"]["roc_auc"]
        out.update(auc=auc["value"], auc_low=auc["low"], auc_high=auc["high"])
    return out


def fmt(v, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.1%}" if pct else f"{v:.3f}"


def table() -> None:
    results = json.loads((home() / "health_runs.json").read_text())
    rows = {"broken": [], "ordinary": []}
    for label, r in results.items():
        f = figures(Path(r["run_dir"]))
        flagged = f["health"] != "healthy"
        rows[r["kind"]].append((label, f, flagged))
    caught = sum(flagged for *_, flagged in rows["broken"])
    alarms = sum(flagged for *_, flagged in rows["ordinary"])
    print(f"Broken runs flagged: **{caught} of {len(rows['broken'])}**. Ordinary runs flagged (false alarms): "
          f"**{alarms} of {len(rows['ordinary'])}**.\n")
    print("| run | kind | val. cells (subjects) | accuracy | majority share | balanced acc. | ROC AUC [95 % "
          "interval over subjects] | health | reason |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in ("broken", "ordinary"):
        for label, f, flagged in rows[kind]:
            auc = (f"{fmt(f.get('auc'))} [{fmt(f.get('auc_low'))}, {fmt(f.get('auc_high'))}]"
                   if "auc" in f else "–")
            print(f"| {label} | {kind} | {f['n']} ({f['subjects']}) | {fmt(f['acc'], True)} | "
                  f"{fmt(f['majority'], True)} | {fmt(f['bal_acc'])} | {auc} | "
                  f"{'**' + f['health'] + '**' if flagged else f['health']} | {f['reasons'] or ''} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("train", "table"))
    {"train": train, "table": table}[ap.parse_args().what]()
