"""What the Train page decides, without Streamlit: its first settings, a preset or recipe switch, a backbone
asked for by a link, which run it attaches to (URL, cached settings, a run in progress), the hint beside Start,
and the verdict a finished run gets. Each takes the page's state (a mapping of the `train_*` keys) or the runs
explicitly and returns what to set and say; the page only draws."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from leukviz.app import dashboard
from leukviz.models import backbones, config
from leukviz.runstore import best, names, runs
from leukviz.scoring import health

LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
PRESET_TEXT = {"quick": "Quick", "paper": "Paper (seed paper's recipe)", "full": "Full"}
WEIGHTS_TEXT = {"imagenet": "ImageNet", "none": "From scratch", "file": "Weights file"}
SETTINGS = ("image_size", "epochs", "batch_size", "lr")
OTHER_DEFAULTS = {"finetune": "full", "repeats": 1, "patience": 0, "head_epochs": 1}
CHOICES = tuple(backbones.BACKBONES)


def default_weights(backbone: str) -> str:
    """ImageNet when its weights are on this machine, else from scratch."""
    return "imagenet" if backbones.imagenet_available(backbones.get_spec(backbone)) else "none"


def defaults(backbone: str, preset: str, weights_choice: str) -> dict[str, Any]:
    """The preset's settings for this backbone and weights (a weights file counts as pretrained)."""
    return config.preset_defaults(preset, backbone, "none" if weights_choice == "none" else "imagenet")


def first_settings(state: Mapping[str, Any]) -> dict[str, Any]:
    """Every `train_*` setting the page starts from: the state's where it has one, else the default (the
    first backbone, the quick preset, the weights this machine has, that preset's numbers)."""
    backbone = state.get("train_backbone") or CHOICES[0]
    preset = state.get("train_preset") or "quick"
    weights = state.get("train_weights") or default_weights(backbone)
    out = {"train_backbone": backbone, "train_preset": preset, "train_weights": weights}
    d = defaults(backbone, preset, weights)
    for name in SETTINGS:
        out[f"train_{name}"] = state.get(f"train_{name}", d[name])
    for name, value in OTHER_DEFAULTS.items():
        out[f"train_{name}"] = state.get(f"train_{name}", value)
    return out


def preset_change(state: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """A new preset: its defaults replace the settings (that is what choosing a preset means). Returns the
    settings to set and the notice saying which changed."""
    d = defaults(state["train_backbone"], state["train_preset"], state["train_weights"])
    changes = {n: (state.get(f"train_{n}"), d[n]) for n in SETTINGS if state.get(f"train_{n}") != d[n]}
    notice = dashboard.changes_text(f"The {PRESET_TEXT[state['train_preset']]} preset", changes)
    return {f"train_{n}": d[n] for n in SETTINGS}, notice


def recipe_switch(state: Mapping[str, Any], prev_backbone: str | None, prev_weights: str | None
                  ) -> tuple[dict[str, Any], str]:
    """A new backbone or weights choice: only the settings its recipe owns change (those whose default differs
    between the previous and the new choice); the user's other settings are kept. A backbone whose ImageNet
    weights are not here switches to from scratch. Returns the settings to set and the notice."""
    backbone, weights = state["train_backbone"], state["train_weights"]
    prev_backbone, prev_weights = prev_backbone or backbone, prev_weights or weights
    old = defaults(prev_backbone, state["train_preset"], prev_weights)
    updates: dict[str, Any] = {}
    note = ""
    if backbone != prev_backbone and weights == "imagenet" and default_weights(backbone) == "none":
        weights = updates["train_weights"] = "none"
        note = " Weights: from scratch (its ImageNet weights are not on this machine)."
    new = defaults(backbone, state["train_preset"], weights)
    current = {n: state.get(f"train_{n}") for n in SETTINGS}
    changes = dashboard.recipe_changes(old, {n: new[n] for n in SETTINGS}, current)
    updates.update({f"train_{n}": v for n, (_, v) in changes.items()})
    owner = f"{names.backbone_title(backbone)}'s recipe"
    if weights != prev_weights:
        owner = f"{WEIGHTS_TEXT[weights]} weights"
    return updates, dashboard.changes_text(owner, changes) + note


def asked_backbone(asked: str | None, state: Mapping[str, Any]) -> str | None:
    """The backbone a link (the Overview's, a shared URL) names, when the page should switch to it: a known one
    that is neither what the page shows nor the one this link already switched to."""
    if asked in CHOICES and asked != state.get("train_url_backbone") and asked != state.get("train_backbone"):
        return asked
    return None


def rates(current: float | None) -> list[float]:
    """The learning-rate slider's stops: the usual ones and the rate on screen (a finder's suggestion)."""
    return sorted({*LEARNING_RATES, *([current] if current is not None else [])})


HINTS = {"running": "This configuration is training right now: Start attaches to it.",
         "queued": "This configuration is queued: Start attaches to it.",
         "starting": "This configuration is starting: Start attaches to it.",
         "stopped": "This configuration was stopped: Start resumes it.",
         "interrupted": "This configuration was interrupted: Start resumes it.",
         "damaged": "This configuration finished, but a file of its run is damaged: Start trains it again."}


def known_state(existing: runs.Run | None) -> str:
    """The state of the settings' own run folder: 'new' when none, 'damaged' for a finished one with a damaged
    file (Start trains it again)."""
    if existing is None:
        return "new"
    return "damaged" if existing.state == runs.State.FINISHED and existing.is_damaged else existing.state


WORKERS_HELP = ("How many repeats train at once on this computer's CPU, each its own process, the cores split "
                "between them (the others wait their turn). 1: one after another, each with every core.")


def worker_range() -> tuple[int, int]:
    """The 'At once' field's bounds: 1 to the cores (at most MAX_REPEATS)."""
    return 1, max(1, min(config.MAX_REPEATS, os.cpu_count() or 1))


def asks_workers(n_repeats: int, gpus: int) -> bool:
    """Whether the page asks how many repeats train at once: several repeats on a CPU with several cores (with
    GPUs the pool puts one on each)."""
    return n_repeats > 1 and gpus == 0 and worker_range()[1] > 1


def start_label(n_repeats: int, seed: int) -> str:
    return "Start training" if n_repeats == 1 else f"Start {n_repeats} runs (seeds {seed}–{seed + n_repeats - 1})"


@dataclass(frozen=True)
class Attach:
    """The run the page shows (None: none yet) and whether it is shown as cached (finished before Start)."""

    run_id: str | None
    cached: bool = False


def best_run(all_runs: Sequence[runs.Run], backbone: str, dataset: str, split: str | None) -> str | None:
    """The run Train shows first for a backbone (runstore.best, the rule of every page): its healthy run or repeat
    group with the best validation score on the dataset and split, that group's best seed; None without one."""
    pick = best.best_per_backbone(dashboard.entries(r for r in all_runs if r.config.backbone == backbone),
                                  dataset, split).get(backbone)
    return pick.lead.run_id if pick is not None and pick.healthy else None


def attach(url_run: str | None, all_runs: Sequence[runs.Run], existing: runs.Run | None, settings_changed: bool,
           best_id: str | None = None) -> Attach:
    """Which run the page shows: the URL's (a reload, a link, Start); but when the settings just changed to ones
    that already finished, their run at once, marked cached, unless the URL's run is one in progress or a
    repeat of those settings; with no run in the URL, a run in progress if there is one, else best_id (the
    backbone's best run here: best_run)."""
    in_progress = [r for r in all_runs if r.state in runs.ACTIVE]
    shown_group: set[str] = set()
    if url_run:
        attached = next((r for r in all_runs if r.run_id == url_run), None)
        if attached is not None:
            shown_group = {r.run_id for r in dashboard.repeat_group(attached, all_runs)}
    if existing is not None and known_state(existing) == runs.State.FINISHED \
            and (existing.run_id == url_run or existing.run_id not in shown_group) \
            and url_run not in {r.run_id for r in in_progress} and (settings_changed or not url_run):
        return Attach(existing.run_id, cached=True)
    if not url_run and in_progress:
        return Attach(in_progress[0].run_id)
    return Attach(url_run or best_id)


@dataclass(frozen=True)
class Verdict:
    """How a finished run is announced: kind is 'error', 'warning', 'info' or 'success'."""

    kind: str
    text: str


def finished_verdict(run: runs.Run, h: health.Health | None, cached: bool) -> Verdict:
    """A finished run's headline: damaged (Start trains it again), degenerate or not judgeable (a warning with
    why, never a green 'Finished.'), cached, or finished."""
    if run.damage:
        return Verdict("error", dashboard.damage_text(run))
    if h is not None and h.degenerate:
        return Verdict("warning", f"Finished, but the model is degenerate: {'; '.join(h.reasons)}. Predict and "
                                  "Compare leave it out of their defaults and the ensemble; try the preset's "
                                  "learning rate or more epochs.")
    if h is not None and h.status == health.UNKNOWN:
        return Verdict("warning", f"Finished, but {'; '.join(h.reasons)}. Choose a split whose validation holds "
                                  "every class on the Data page to judge it.")
    if cached:
        return Verdict("info", "Cached: this exact configuration had already finished, so nothing was retrained.")
    return Verdict("success", "Finished.")


def split_notice(chosen: str | None, used: str, why: str | None) -> str | None:
    """Why this run's split is not the one chosen on the Data page (None when it is)."""
    if chosen in (None, used):
        return None
    reason = f" ({why})" if why else ""
    return (f"The split chosen on the Data page ({names.SPLIT_CHOICE.get(chosen, chosen)}) is not possible on "
            f"this dataset{reason}, so this run uses {names.SPLIT_CHOICE[used]}.")


def progress_label(state: str, p: dashboard.Progress) -> str:
    """The progress bar's text for a run in progress."""
    return {"starting": "Starting the training process…",
            "queued": "Queued: waiting for the device (another run is training)…"}.get(state, p.text)
