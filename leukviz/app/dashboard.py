"""What the pages say about runs: text helpers, run queries and the overview's cards, training progress,
the Data page's samples. The Compare page's numbers are in comparison/, the Predict page's in prediction.py;
no Streamlit in here."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leukviz.core import paths
from leukviz.core.events import BATCH, EPOCH, finite, latest_start
from leukviz.core.filenames import CONFIG
from leukviz.models import backbones, config
from leukviz.models.config import RunConfig
from leukviz.runstore import best, runs, summary
from leukviz.runstore.names import backbone_title, dataset_label, format_duration
from leukviz.runstore.runfiles import RunFileError
from leukviz.scoring import health, metrics

# ---------------------------------------------------------------------------------------------- text

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=\"'&^%@/])")


def plain(text: Any) -> str:
    """User-supplied text made literal inside Streamlit markdown: every markdown, LaTeX ($) and
    directive (:red[...], :material/x:) character is backslash-escaped, and HTML is never rendered."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def run_label(run: runs.Run) -> str:
    """A run as a user thinks of it, for pickers: 'ResNet50 · cnmc-fold1-dev · seed 1 · F1 0.891', marked
    when degenerate."""
    parts = [backbone_title(run.config.backbone), dataset_label(run.config.data), f"seed {run.config.seed}"]
    f1 = run.final_metrics().get("val_f1") if run.state == runs.State.FINISHED else None
    if f1 is not None:
        parts.append(f"F1 {f1:.3f}")
    h = run_health(run)
    if h is not None and h.degenerate:
        parts.append("degenerate")
    elif h is not None and h.status == health.UNKNOWN:
        parts.append("cannot be judged")
    return " · ".join(parts) + f" · {run.run_id[:6]}"


# ---------------------------------------------------------------------------------------------- settings

# The Train page's settings as the URL names them (so a reload or a bookmark restores them) -> their
# session-state keys. The dataset and split are in the URL too (URL_DATA).
URL_SETTINGS = {"backbone": "train_backbone", "preset": "train_preset", "weights": "train_weights",
                "size": "train_image_size", "epochs": "train_epochs", "batch": "train_batch_size", "lr": "train_lr",
                "finetune": "train_finetune", "head_epochs": "train_head_epochs", "repeats": "train_repeats",
                "patience": "train_patience"}
URL_DATA = {"dataset": "dataset", "split": "split"}
# The number fields' ranges, shared by the widgets and the URL reader.
SETTING_RANGES = {"train_image_size": config.IMAGE_SIZES, "train_epochs": (1, 500), "train_batch_size": (1, 4096),
                  "train_head_epochs": (1, 499), "train_repeats": (1, config.MAX_REPEATS), "train_patience": (0, 500)}


def _url_value(key: str, text: str) -> Any:
    """One URL value as its setting's type, or None when it is not a valid value of that setting."""
    if key == "train_backbone":
        return text if text in backbones.BACKBONES else None
    if key == "train_preset":
        return text if text in config.PRESETS else None
    if key == "train_weights":
        return text if text in ("imagenet", "none") else None
    if key == "train_finetune":
        return text if text in config.FINETUNE else None
    if key == "split":
        return text if text in config.SPLITS else None
    if key == "dataset":
        return text or None
    try:
        v = float(text)
    except ValueError:
        return None
    if key == "train_lr":
        return v if math.isfinite(v) and 0 < v < 10 else None
    low, high = SETTING_RANGES[key]
    return int(v) if v.is_integer() and low <= v <= high else None


def settings_from_url(params: Any) -> dict[str, Any]:
    """The valid settings a URL's query parameters name, by session-state key (read_url)."""
    return read_url(params)[0]


def read_url(params: Any) -> tuple[dict[str, Any], list[str]]:
    """The valid settings a URL's query parameters name, by session-state key, and a note for each value
    that is not valid (epochs=-5, lr=nan, size=99999999, an unknown backbone, a dataset outside
    LEUKVIZ_DATA_ROOTS): that setting keeps its default, and the page shows the note."""
    out, notes = {}, []
    for name, key in {**URL_DATA, **URL_SETTINGS}.items():
        text = params.get(name)
        if text is None:
            continue
        value = _url_value(key, str(text))
        refusal = paths.data_refusal(str(value)) if key == "dataset" and value is not None else None
        if value is not None and refusal is None:
            out[key] = value
        else:
            shown = str(text) if len(str(text)) <= 60 else str(text)[:57] + "…"
            notes.append(f"The link's {name}={shown} was not used ({refusal or _url_rule(key)}); the default is kept.")
    return out, notes


def _url_rule(key: str) -> str:
    """What a URL setting takes, in words, for read_url's notes."""
    choices = {"train_backbone": backbones.BACKBONES, "train_preset": config.PRESETS, "train_weights": ("imagenet", "none"),
               "train_finetune": config.FINETUNE, "split": config.SPLITS}
    if key in choices:
        return "one of " + ", ".join(map(str, choices[key]))
    if key == "train_lr":
        return "a number above 0 and below 10"
    if key == "dataset":
        return "a dataset path or demo"
    low, high = SETTING_RANGES[key]
    return f"a whole number from {low} to {high}"


def settings_to_url(state: Any, names: Iterable[str]) -> dict[str, str]:
    """The query parameters for the settings in state (names: keys of URL_SETTINGS or URL_DATA)."""
    keys = {**URL_DATA, **URL_SETTINGS}
    return {name: f"{state[keys[name]]:g}" if isinstance(state.get(keys[name]), float) else str(state[keys[name]])
            for name in names if state.get(keys[name]) is not None}


def recipe_changes(old: dict[str, Any], new: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """What switching backbone (or weights) changes: the settings whose preset default differs between the
    old and the new choice (the new backbone's recipe owns them), as {name: (current value, new value)}.
    Every other setting keeps what the user chose."""
    return {k: (current.get(k), new[k]) for k in new if k in current and old.get(k) != new[k]}


SETTING_NAMES = {"image_size": "image size", "epochs": "epochs", "batch_size": "batch size", "lr": "learning rate"}


def changes_text(owner: str, changes: dict[str, tuple[Any, Any]]) -> str:
    """'VGG16's recipe set learning rate 0.0001 (was 0.001); your other settings are kept.'"""
    if not changes:
        return f"{owner}: your settings are kept."
    parts = [f"{SETTING_NAMES.get(k, k)} {v:g} (was {was:g})" if isinstance(v, float) else f"{SETTING_NAMES.get(k, k)} {v} (was {was})"
             for k, (was, v) in changes.items()]
    return f"{owner} set " + ", ".join(parts) + "; your other settings are kept."


# ---------------------------------------------------------------------------------------------- runs

def all_runs(runs_dir: str | Path | None = None) -> list[runs.Run]:
    """Every run whose config.json reads, newest first; one with a damaged config.json is left out (it is
    among damaged_runs), never fatal. Each is read through its stored summary (runstore.summary), so a page
    listing hundreds of runs reads no predictions file."""
    out = []
    for r in summary.list_runs(runs_dir):
        try:
            r.config  # noqa: B018 - checked once, to leave out runs whose config cannot be read
        except (RunFileError, OSError):
            continue
        out.append(r)
    return out


def finished_runs(runs_dir: str | Path | None = None) -> list[runs.Run]:
    """The runs Predict and Compare use: finished, and every file they read sound (runs.Run.is_usable)."""
    return [r for r in all_runs(runs_dir) if r.is_usable]


def damaged_runs(runs_dir: str | Path | None = None) -> list[runs.Run]:
    """The runs left out because a file they need is damaged (each Run.problems says which, and the repair)."""
    return [r for r in summary.list_runs(runs_dir) if r.is_damaged]


def damage_text(run: runs.Run) -> str:
    """One line for a damaged run: its id and, per damaged file, what is wrong and the repair."""
    return f"run {run.run_id}: " + " · ".join(str(p) for p in run.damage)


def find_run(cfg: RunConfig, fingerprint: str, runs_dir: str | Path | None = None) -> runs.Run | None:
    """The run folder of this exact configuration, if one exists (unlike runs.run_for, creates nothing)."""
    path = runs.runs_root(runs_dir, create=False) / cfg.identity(fingerprint)
    return runs.Run(path) if (path / CONFIG).exists() else None


def run_health(run: runs.Run) -> health.Health | None:
    """A finished run's health (health.of_run_dir, the one rule, as its summary stored it); None for a run that
    is not finished."""
    return summary.health(run)


def healthy_runs(candidates: Iterable[runs.Run]) -> list[runs.Run]:
    """The runs whose kept model is not degenerate (what Predict offers first and ensembles by default)."""
    return [r for r in candidates if not (run_health(r) or health.Health(health.HEALTHY)).degenerate]


def entries(candidates: Iterable[runs.Run]) -> list[best.Entry]:
    """What the one choice of runs (runstore.best) reads of each run."""
    return [best.entry(r) for r in candidates]


def default_models(finished: Sequence[runs.Run], dataset: str, split: str | None = None) -> list[runs.Run]:
    """Models offered first for prediction (best.preselect): per backbone, the healthy run or repeat group
    with the best validation score on the active dataset and split. None when nothing was trained on the
    active dataset: the page says which runs exist where (best.datasets_text) and the user chooses."""
    by_id = {r.run_id: r for r in finished}
    return [by_id[i] for i in best.preselect(entries(finished), dataset, split)]


def no_default_text(finished: Sequence[runs.Run], dataset: str) -> str:
    """Why a page preselected no model (default_models gave none): nothing healthy trained on the active
    dataset (and which runs exist for which datasets), or every model here degenerate."""
    here = [r for r in finished if r.config.data == dataset]
    if not here:
        return (f"No model was trained on the active dataset ({dataset_label(dataset)}), so none is chosen for you. "
                f"Finished runs: {best.datasets_text(entries(finished))}. Choose one above knowingly: a model "
                "meets cells unlike its training data here, and its label names what it was trained on.")
    return ("Every finished model on this dataset is degenerate or cannot be judged (each run's page on Train says "
            "why), so none is chosen for you: choose one above to predict with it anyway.")


def repeat_group(run: runs.Run, candidates: Iterable[runs.Run]) -> list[runs.Run]:
    """The repeats of run's configuration among candidates (config.repeat_key), by seed."""
    key = run.repeat_key
    return sorted((r for r in candidates if r.repeat_key == key), key=lambda r: r.config.seed)


@dataclass
class GroupSummary:
    """Repeats of one configuration: each seed's run and state, and mean ± sd over the finished healthy
    ones (a degenerate seed is counted apart, never averaged in silently)."""

    members: list[runs.Run]
    states: list[str]
    f1: dict | None  # metrics.seed_spread of validation weighted F1 over the finished, healthy seeds
    acc: dict | None
    degenerate: list[runs.Run]

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def done(self) -> bool:
        return all(s not in runs.ACTIVE for s in self.states)

    def score_text(self, key: str = "f1", count: bool = True) -> str:
        """'0.871 ± 0.021 (3 seeds)' (count: with the number of seeds), or the one value for one seed; '–'
        with none."""
        spread = self.f1 if key == "f1" else self.acc
        if not spread:
            return "–"
        fmt = (lambda v: f"{v:.3f}") if key == "f1" else (lambda v: f"{v:.1%}")
        if spread["sd"] is None:
            return fmt(spread["mean"])
        return f"{fmt(spread['mean'])} ± {fmt(spread['sd'])}" + (f" ({spread['n']} seeds)" if count else "")


def seed_state_text(run: runs.Run, state: str) -> str:
    """One repeat's state for the Train page's group: 'finished · F1 0.871', 'running · 40 %', 'queued'."""
    if state == runs.State.FINISHED:
        h = run_health(run)
        if h is not None and h.degenerate:
            return "finished · degenerate"
        f1 = run.final_metrics().get("val_f1")
        return "finished" + (f" · F1 {f1:.3f}" if f1 is not None else "")
    if state == runs.State.RUNNING:
        return f"running · {progress(run.events()).fraction:.0%}"
    return state


def group_summary(members: Sequence[runs.Run]) -> GroupSummary:
    """What Train and the Overview show of a group of repeats."""
    states = [r.state for r in members]
    f1s, accs, bad = [], [], []
    for r, state in zip(members, states):
        if state != runs.State.FINISHED or r.is_damaged:
            continue
        h = run_health(r)
        if h is not None and h.degenerate:
            bad.append(r)
            continue
        m = r.final_metrics()
        if "val_f1" in m:
            f1s.append(m["val_f1"])
        if "val_acc" in m:
            accs.append(m["val_acc"])
    return GroupSummary(list(members), states, metrics.seed_spread(f1s) if f1s else None,
                        metrics.seed_spread(accs) if accs else None, bad)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class Card:
    """What the overview shows for one backbone: its run in training if one is, else its best (runstore.best:
    the healthy run or repeat group with the best validation score on the dataset and split), and the rest."""

    backbone: str
    title: str
    state: str  # "none" when no run of this backbone exists on the dataset
    run_id: str | None = None
    epoch: int = 0
    epochs: int = 0
    val_acc: float | None = None
    val_f1: float | None = None
    error: str | None = None
    health: health.Health | None = None  # of the finished run shown (run_health)
    group: GroupSummary | None = None  # the repeats of its configuration, when there are several
    note: str = ""  # why this run is the one shown ("Best of 4 runs on this dataset ...")
    others: tuple[tuple[str, str], ...] = ()  # (run id, run_label) of the backbone's other runs here, best first,
    # the first OTHERS_SHOWN of them (a label costs a read of the run; a lab keeps hundreds)
    n_others: int = 0  # how many other runs there are in all

    @property
    def text(self) -> str:
        if self.state == "none":
            return "No run yet"
        if self.state == runs.State.STARTING:
            return "Starting…"
        if self.state == runs.State.QUEUED:
            return "Queued: waits for the device"
        if self.state == runs.State.RUNNING:
            return f"Running: epoch {min(self.epoch + 1, self.epochs)} of {self.epochs}"
        if self.state == runs.State.FINISHED:
            if self.health is not None and self.health.degenerate:
                return "Finished: degenerate model"
            if self.health is not None and self.health.status == health.UNKNOWN:
                return "Finished: its scores cannot judge it"
            return "Finished"
        return self.state.capitalize()

    @property
    def scores(self) -> tuple[str, str]:
        """(accuracy, weighted F1) as the card shows them: the group's mean ± sd over seeds when the
        configuration was repeated, else the run's own."""
        if self.group is not None and self.group.f1 is not None:
            return self.group.score_text("acc"), self.group.score_text("f1")
        return (f"{self.val_acc:.1%}" if self.val_acc is not None else "–",
                f"{self.val_f1:.3f}" if self.val_f1 is not None else "–")


def _pick_note(pick: best.Pick | None, n_runs: int, split: str | None) -> str:
    """Why the card shows this run: the best of how many, on which split."""
    if pick is None:
        return ""
    what = "repeat group" if len(pick.members) > 1 else "run"
    where = "" if pick.on_split or split is None else " (none on the active split: the best on another split)"
    if not pick.healthy:
        return f"No healthy run of this backbone here: the best of the rest{where}." if n_runs > 1 else ""
    if n_runs <= len(pick.members):
        return f"Its only {what} on this dataset{where}." if where else ""
    return f"The {what} with the best validation F1 of {n_runs} runs on this dataset{where}."


OTHERS_SHOWN = 20  # the other runs a card names (best first); the rest are counted


def backbone_cards(dataset: str, runs_dir: str | Path | None = None, split: str | None = None) -> list[Card]:
    """One card per registered backbone: its run in training on this dataset if one is, else its best
    (best.best_per_backbone on the dataset and split), else its newest run that started; with the others."""
    mine = [r for r in all_runs(runs_dir) if r.config.data == dataset and not r.is_damaged]
    by_id = {r.run_id: r for r in mine}
    picks = best.best_per_backbone(entries(mine), dataset, split)
    cards = []
    for name, spec in backbones.BACKBONES.items():
        of_backbone = [r for r in mine if r.config.backbone == name]
        pick = picks.get(name)
        chosen = next((r for r in of_backbone if r.state in runs.ACTIVE), None)
        chosen = chosen or (by_id[pick.lead.run_id] if pick else None)
        chosen = chosen or next((r for r in of_backbone if r.state != runs.State.NEW), None)
        if chosen is None:
            cards.append(Card(name, spec.title, "none"))
            continue
        s = chosen.status
        m = chosen.final_metrics() if s["state"] == runs.State.FINISHED else {}
        epochs_done = len(chosen.epochs()) if s["state"] in runs.ACTIVE else int(s.get("epoch") or 0)
        epochs = int(s.get("epochs") or chosen.config.epochs)
        group = repeat_group(chosen, of_backbone)
        shown = {r.run_id for r in group}
        order = ([e.run_id for e in pick.others] if pick else []) + [r.run_id for r in of_backbone]
        other_ids = [i for i in dict.fromkeys(order) if i not in shown]
        others = tuple((i, run_label(by_id[i])) for i in other_ids[:OTHERS_SHOWN])
        note = _pick_note(pick, len(of_backbone), split) if pick and chosen.run_id in pick.run_ids else ""
        cards.append(Card(name, spec.title, s["state"], chosen.run_id, epochs_done, epochs,
                          m.get("val_acc"), m.get("val_f1"), s.get("error"), run_health(chosen),
                          group_summary(group) if len(group) > 1 else None, note, others, len(other_ids)))
    return cards


# ---------------------------------------------------------------------------------------------- progress

@dataclass
class Progress:
    fraction: float
    epoch: int  # the epoch in progress (or the last one done)
    epochs: int
    step: int
    steps: int
    eta: float | None  # seconds left, None until the first batch
    text: str


def progress(events: Sequence[dict], now: float | None = None) -> Progress:
    """Fraction done and time left of a run, from its metrics.jsonl events (rate measured since the
    latest start or resume, so time spent before a stop does not skew it)."""
    s0 = latest_start(events)
    if s0 is None:
        return Progress(0.0, 0, 0, 0, 0, None, "Preparing data and model…")
    epochs, steps = int(s0.get("epochs") or 1), max(1, int(s0.get("steps_per_epoch") or 1))
    total = epochs * steps
    done0 = int(s0.get("epoch") or 0) * steps + int(s0.get("step") or 0)
    done, t_last, epoch, step = done0, float(s0.get("time") or 0), max(1, int(s0.get("epoch") or 0) + 1), 0
    for e in events:
        if e.get("type") == BATCH:
            d = (int(e["epoch"]) - 1) * steps + int(e["step"])
        elif e.get("type") == EPOCH:
            d = int(e["epoch"]) * steps
        else:
            continue
        if d >= done:
            done, t_last = d, float(e.get("time") or t_last)
            epoch, step = int(e["epoch"]), int(e["step"]) if e["type"] == BATCH else steps
    eta = None
    elapsed = (t_last if now is None else now) - float(s0.get("time") or 0)
    if done > done0 and elapsed > 0:
        eta = max(0.0, (total - done) * elapsed / (done - done0))
        finished = [e for e in events if e.get("type") == EPOCH and float(e.get("time") or 0) >= float(s0.get("time") or 0)
                    and finite(e.get("seconds")) is not None]
        if finished:  # whole epochs timed, their validation included: the best measure of what is left
            per_epoch = sum(float(e["seconds"]) for e in finished) / len(finished)
            eta = max(0.0, (total - done) / steps * per_epoch)
        else:  # only training steps timed so far: add each remaining epoch's validation, a forward pass
            # over the validation images (about a third of a training step's work per image)
            n_train, n_val = finite(s0.get("n_train")) or 0, finite(s0.get("n_val")) or 0
            if n_train > 0:
                eta *= 1 + n_val / (3 * n_train)
    frac = min(1.0, done / total)
    last = next((e for e in reversed(events) if e.get("type") in (BATCH, EPOCH)), None)
    validating = last is not None and last.get("type") == BATCH and step >= steps  # steps done, no epoch yet
    text = f"Epoch {epoch} of {epochs} · " + ("training steps done, validating…" if validating
                                             else f"step {step} of {steps}")
    if eta is not None and (eta >= 1 or not validating):
        text += f" · about {format_duration(eta)} left"
    return Progress(frac, epoch, epochs, step, steps, eta, text)
