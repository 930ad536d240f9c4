"""What the commands share: the one-line error, the output (human or --json), training progress on stderr,
a run's result and health, the option parsers and the RunConfig options, and the choosing and checking of
runs and output paths before any work."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from leukviz.core.errors import LeukvizError
from leukviz.core.events import BATCH, BEGINNINGS, EPOCH
from leukviz.models import config as C


class CliError(LeukvizError):
    """An error reported as one clear line, exit status 2."""


def _out(args, human: str, obj: dict) -> None:
    """Human text, or with --json one JSON object as the last line of stdout."""
    if getattr(args, "json", False):
        print(json.dumps(obj, default=str))
    else:
        print(human)


class Progress:
    """Training progress on stderr: on a terminal one tqdm bar per epoch (images done, elapsed, ETA,
    images/s, running loss and accuracy), replaced by the epoch's summary line when it ends; otherwise only
    the summary lines, one per epoch, so a log stays readable."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.time()
        self.n_train = 0  # from the start event: the bar counts images, so tqdm's rate is images/s
        self.bar = None

    def __call__(self, ev: dict) -> None:
        if not self.enabled:
            return
        t = ev.get("type")
        if t == BATCH and self.tty:
            self._batch(ev)
        elif t == EPOCH:
            from leukviz.runstore.names import format_duration

            self._close()
            left = (ev["epochs"] - ev["epoch"]) * ev["seconds"]  # the next epochs take about as long
            eta = f", about {format_duration(left)} left" if left > 0 else ""
            sys.stderr.write(f"epoch {ev['epoch']}/{ev['epochs']}: train loss {ev['train_loss']:.4f} "
                             f"acc {ev['train_acc']:.3f} | val loss {ev['val_loss']:.4f} acc {ev['val_acc']:.3f} "
                             f"F1 {ev['val_f1']:.3f} | {ev['seconds']:.1f}s, "
                             f"{ev.get('images_per_s', 0):.0f} images/s{eta}\n")
        elif t in BEGINNINGS:
            self.n_train = int(ev.get("n_train") or 0)
            sys.stderr.write(f"{t}: {ev['n_train']} train / {ev['n_val']} val images on {ev['device']} "
                             f"({ev['precision']}), split {ev['split']['method']}\n")

    def _batch(self, ev: dict) -> None:
        from tqdm import tqdm

        total = self.n_train or ev["steps"]
        done = min(total, round(ev["step"] * total / ev["steps"]))  # batch events count steps, the bar images
        new = self.bar is None or self.bar.desc != f"epoch {ev['epoch']}"
        if new:
            self._close()
            # a resumed epoch starts part-way: tqdm's rate and ETA then count only what this process does
            self.bar = tqdm(total=total, initial=done, desc=f"epoch {ev['epoch']}", unit="img", leave=False,
                            file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        # tqdm redraws at most every 0.1 s: the postfix waits for the next redraw, except on a new bar
        self.bar.set_postfix_str(f"loss {ev['loss']:.4f} acc {ev['acc']:.3f}", refresh=new)
        if not new:
            self.bar.update(done - self.bar.n)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _health(run) -> dict:
    """A run's health and its reasons (health.of_run_dir) for --json; None for a run that is not finished."""
    from leukviz import api

    return api.health_of(run)


def _health_text(res: dict) -> str:
    """What --json's health says, on a run's text line: '; DEGENERATE: calls every validation cell hem', or for
    a run its validation cannot judge '; WARNING: its validation has one class ...'; nothing when healthy."""
    if res.get("health") == "degenerate":
        return "; DEGENERATE: " + "; ".join(res["health_reasons"])
    if res.get("health") == "unknown":
        return "; WARNING, health unknown: " + "; ".join(res["health_reasons"])
    return ""


def _train_result(run, cached: bool, t0: float) -> dict:
    st = run.status
    return {"run_id": run.run_id, "run_dir": str(run.dir), "status": st["state"], "cached": cached,
            "backbone": run.config.backbone, "metrics": run.final_metrics(), "error": st.get("error"),
            "early_stop": st.get("early_stop"), **_health(run), "seconds": round(time.time() - t0, 2)}


# The RunConfig fields the train command sets, in its --help order; unset (None) means the preset's default.
TRAIN_FIELDS = ("epochs", "image_size", "batch_size", "lr", "optimizer", "split", "val_fold", "n_folds", "average",
                "select", "bn_stats", "finetune", "head_epochs", "augment", "precision", "freeze_bn", "class_balance", "seed",
                "split_seed", "patience")
FLAGS = {"n_folds": "--folds"}  # otherwise --the-field-name
MAX_SEED = 2**32 - 1  # numpy's and torch's generators take it; seeds derived from it stay under 2**64


def _seed_value(text: str) -> int:
    """--seed / --split-seed: a whole number from 0 to MAX_SEED, checked before any run folder is made."""
    return _bounded(0, MAX_SEED)(text)


DEVICES = ("auto", "cpu", "cuda", "mps")


def _bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from low to high, checked before any work (config.parse_value)."""
    def parse(text: str) -> int:
        try:
            return C.parse_value(text, int, low, high)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _backbone_list(text: str | None) -> tuple[str, ...]:
    """--backbones a,b: each once, in the order given (googlenet,googlenet is one backbone)."""
    return tuple(dict.fromkeys(b.strip() for b in text.split(",") if b.strip())) if text else ()


def _device_value(text: str) -> str:
    """--device: auto, cpu, cuda, cuda:N or mps, checked before any run folder is made (torch accepts others,
    such as meta, that cannot train)."""
    kind, _, index = text.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; choose one of: {', '.join(DEVICES)} "
                                         "(or cuda:N for one GPU)")
    return text


def add_config_options(parser: argparse.ArgumentParser, names: tuple[str, ...] = TRAIN_FIELDS) -> None:
    """One option per RunConfig field, its type, choices and help taken from config."""
    import dataclasses

    types = {f.name: int if f.default is None else type(f.default) for f in dataclasses.fields(C.RunConfig)}
    for name in names:
        flag, kw = FLAGS.get(name, "--" + name.replace("_", "-")), {"dest": name, "help": C.HELP.get(name)}
        if types[name] is bool:
            parser.add_argument(flag, action="store_true", default=None, **kw)
        elif name in C.CHOICES:
            parser.add_argument(flag, choices=C.CHOICES[name], **kw)
        else:
            kind = _seed_value if name in ("seed", "split_seed") else types[name]
            parser.add_argument(flag, type=kind, metavar=flag.lstrip("-").replace("-", "_").upper(), **kw)


def add_group_options(parser: argparse.ArgumentParser, group: str, gather: str = "gathers them") -> None:
    """--workers and --shard, one shape and one meaning wherever a command trains a group of runs (train --seeds,
    --cv, every study): group names the group in the help; gather says what a last call without --shard does."""
    parser.add_argument("--workers", type=_bounded(1, 64), default=1, metavar="W",
                        help=f"train {group} W at a time on CPU, each its own process, the cores split between them "
                             "(with several GPUs: one run per GPU at once, whatever this says; default 1: one after "
                             "another)")
    from leukviz.runstore import shards

    parser.add_argument("--shard", type=shards.parse, metavar="I/N",
                        help=f"train only every N-th of {group} starting at the I-th (a Slurm array task, or one of N "
                             f"machines sharing the runs folder); a last call without --shard {gather}")


def pool_envs(args) -> list[dict[str, str]]:
    """The device pool's workers for a group of runs (runstore.pool.worker_envs): one per GPU, or --workers on
    CPU; one worker (the runs one after another here) for a named device (cuda:1, mps) or under torchrun."""
    import os

    from leukviz.runstore import pool

    if args.device not in ("auto", "cuda", "cpu") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return [{}]
    return pool.worker_envs(args.device, args.workers)

def _resolve_cfg(args) -> C.RunConfig:
    """The train options as a RunConfig, by the API's config() (a train/ + val/ tree: its own validation folder)."""
    from leukviz import api

    return api.config(args.backbone, args.data, args.weights, args.preset,
                      **{name: getattr(args, name) for name in TRAIN_FIELDS})


def _fmt(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _selected_runs(run_arg: str, runs_dir):
    from leukviz.runstore import runs

    if run_arg == "all":
        from leukviz.app import dashboard

        for r in dashboard.damaged_runs(runs_dir):
            print(f"left out, damaged: {dashboard.damage_text(r)}", file=sys.stderr)
        chosen = dashboard.finished_runs(runs_dir)
        if not chosen:
            raise CliError("no usable finished runs (`runs list` names what is wrong with each); train one first")
        return chosen
    return [_warn_unfinished(runs.get_run(run_arg, runs_dir))]


def _without_degenerate(chosen: list, verb: str) -> list:
    """The runs of 'all' less the degenerate ones, each named on stderr (api.without_degenerate)."""
    from leukviz import api

    return api.without_degenerate(chosen, verb, lambda s: print(s, file=sys.stderr))


def _warn_unfinished(run):
    """The run, after a warning on stderr when its model is not a finished run's (stopped, interrupted)."""
    note = run.unfinished()
    if note:
        print(f"warning: {note}; its results are of an unfinished model", file=sys.stderr)
    return run


def _output_file(path: str, flag: str, example: str = "output"):
    """Where a command will write a user's file (storage.OutputTarget), checked before the work by the output
    rule (storage.prepare_output): a regular file or new name (its folder made and probed for writing), `-`
    (stdout), a pipe or character device; an empty name, a folder, a socket, a name too long or a folder that
    cannot be written in is a CliError naming the flag. example: the file name a folder's message suggests."""
    from leukviz.core import storage

    try:
        return storage.prepare_output(path, flag, example)
    except storage.OutputError as e:
        raise CliError(str(e)) from None


def _output_folder(path: str, flag: str) -> Path:
    """Where a command will write files, checked (and made, and probed for writing) before the work: an empty
    name, a file at the path, or a folder that cannot be made or written in is a CliError naming the flag."""
    import tempfile

    if not path.strip():
        raise CliError(f"{flag} is empty: give a folder to write into")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise CliError(f"{flag} {path} is a file; give a folder to write into")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=".leukviz-probe-", dir=p):
            pass
    except OSError as e:
        raise CliError(f"{flag} {path}: cannot write in this folder ({e.strerror or e})") from None
    return p
