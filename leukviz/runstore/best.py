"""Which run a page shows or preselects, decided once for every page and `runs list`: per backbone, the healthy
repeat group (or single run) with the best validation score on the active dataset and split, not the newest;
with how many other runs of that backbone exist there, and which.

The choice reads a short record per run (`Entry`: backbone, dataset, split, repeat group, state, validation
weighted F1, health), made from a run folder by `entry`; anything that already holds those figures (a stored
per-run summary) can build the entries instead and call `best_per_backbone` the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from leukviz.models import backbones
from leukviz.runstore.runfolder import Run
from leukviz.runstore.states import State
from leukviz.scoring import health

SCORE = "val_f1"  # the validation score that ranks runs: weighted F1 of the kept model, as everywhere


@dataclass(frozen=True)
class Entry:
    """What the choice reads of one run."""

    run_id: str
    backbone: str
    data: str  # the dataset spec the run trained on (config.data)
    split: str
    group: str  # config.repeat_key: every setting but the seed, and the dataset's fingerprint
    seed: int
    state: str
    score: float | None  # validation weighted F1 of the kept model; None unless finished
    health: str | None  # health.HEALTHY / DEGENERATE / UNKNOWN; None unless finished
    created: float = 0.0  # newest wins a tie


def entry(run: Run) -> Entry:
    """A run folder's entry (its config must read; a damaged finished run counts as degenerate: unusable)."""
    state = run.state
    finished = state == State.FINISHED
    h = None
    if finished:
        stored = getattr(run, "health", None)  # a runstore.summary.SummarisedRun's, from its stored summary
        h = health.DEGENERATE if run.is_damaged else (stored or health.of_run_dir(run.dir)).status
    cfg = run.config
    score = run.final_metrics().get(SCORE) if finished else None
    return Entry(run.run_id, cfg.backbone, cfg.data, cfg.split, run.repeat_key, cfg.seed, state,
                 float(score) if score is not None else None, h, float(run.created or 0.0))


@dataclass(frozen=True)
class Pick:
    """A backbone's chosen run or repeat group on a dataset, and the rest of its runs there."""

    backbone: str
    members: tuple[Entry, ...]  # the chosen group's runs by seed (one for a single run)
    score: float | None  # the mean validation score of its healthy members
    healthy: bool  # False: no healthy finished run of this backbone here; the best of the rest is named
    on_split: bool  # False: none on the active split, so the best on another split of this dataset
    others: tuple[Entry, ...]  # every other run of this backbone on this dataset, best first

    @property
    def run_ids(self) -> list[str]:
        return [e.run_id for e in self.members]

    @property
    def lead(self) -> Entry:
        """The member a page opens: the group's best healthy seed."""
        healthy = [e for e in self.members if e.health == health.HEALTHY and e.score is not None]
        return max(healthy, key=lambda e: e.score) if healthy else self.members[0]

    @property
    def others_text(self) -> str:
        """'2 other runs of this backbone on this dataset' or ''."""
        n = len(self.others)
        return f"{n} other run{'s' if n != 1 else ''} of this backbone on this dataset" if n else ""


def _group_rank(members: Sequence[Entry]) -> tuple:
    """Sort key, best first: healthy before unknown before degenerate, then the mean score over the healthy
    (else all finished) members, then more seeds, then newest."""
    finished = [e for e in members if e.state == State.FINISHED]
    healthy = [e for e in finished if e.health == health.HEALTHY and e.score is not None]
    unknown = [e for e in finished if e.health == health.UNKNOWN and e.score is not None]
    scored = healthy or unknown or [e for e in finished if e.score is not None]
    level = 2 if healthy else 1 if unknown else 0
    mean = sum(e.score for e in scored) / len(scored) if scored else -1.0
    return (level, mean, len(scored), max(e.created for e in members))


def _groups(entries: Iterable[Entry]) -> list[tuple[Entry, ...]]:
    out: dict[str, list[Entry]] = {}
    for e in entries:
        out.setdefault(e.group, []).append(e)
    return [tuple(sorted(g, key=lambda e: e.seed)) for g in out.values()]


def best_per_backbone(entries: Iterable[Entry], dataset: str | None, split: str | None = None) -> dict[str, Pick]:
    """Per registered backbone with a finished run on `dataset` (None: the entries given, whatever their
    dataset, as Compare's comparable group), in registry order: the repeat group (or run)
    with the best validation score, healthy ones first, on `split` when it has any there (else on the
    dataset's other splits, marked on_split=False). Runs in progress or unfinished are never the pick; they
    are among `others`."""
    mine = [e for e in entries if dataset is None or e.data == dataset]
    out = {}
    for name in backbones.BACKBONES:
        of_backbone = [e for e in mine if e.backbone == name]
        finished = [e for e in of_backbone if e.state == State.FINISHED]
        if not finished:
            continue
        on_split = [e for e in finished if split is None or e.split == split]
        groups = sorted(_groups(on_split or finished), key=_group_rank, reverse=True)
        chosen = groups[0]
        rank = _group_rank(chosen)
        chosen_ids = {e.run_id for e in chosen}
        rest = sorted((e for e in of_backbone if e.run_id not in chosen_ids),
                      key=lambda e: (e.state == State.FINISHED, e.health == health.HEALTHY, e.score or -1.0),
                      reverse=True)
        out[name] = Pick(name, chosen, rank[1] if rank[1] >= 0 else None, rank[0] == 2, bool(on_split), tuple(rest))
    return out


# A page preselects at most this many seeds of one repeat group: a group of 50 seeds would otherwise make
# Predict load 50 models and Compare score 50 runs before the first paint; the others stay one click away.
PRESELECT_SEEDS = 5


def preselect(entries: Iterable[Entry], dataset: str | None, split: str | None = None) -> list[str]:
    """The run ids a page selects first (Predict's models, Compare's runs): the members of each backbone's
    healthy pick on the active dataset (at most PRESELECT_SEEDS of a repeat group, its first by seed), in
    registry order and by seed. None from another dataset: a page says which runs exist where and lets the
    user choose them knowingly."""
    return [e.run_id for p in best_per_backbone(entries, dataset, split).values() if p.healthy
            for e in [m for m in p.members if m.health == health.HEALTHY][:PRESELECT_SEEDS]]


def best_ids(entries: Sequence[Entry]) -> set[str]:
    """The runs `runs list` marks best: each backbone's healthy pick on each dataset and split."""
    out: set[str] = set()
    for data, split in {(e.data, e.split) for e in entries}:
        same = [e for e in entries if e.split == split]
        out |= {i for p in best_per_backbone(same, data, split).values() if p.healthy for i in p.run_ids}
    return out


def datasets_text(entries: Iterable[Entry]) -> str:
    """Which finished runs exist for which datasets: 'demo: 3 runs (ResNet50, GoogLeNet) · /data/x: 1 run
    (VGG16)'."""
    from leukviz.runstore.names import backbone_title, dataset_label

    per: dict[str, list[Entry]] = {}
    for e in entries:
        if e.state == State.FINISHED:
            per.setdefault(e.data, []).append(e)
    parts = []
    for data, es in per.items():
        titles = ", ".join(dict.fromkeys(backbone_title(e.backbone) for e in es))
        parts.append(f"{dataset_label(data)}: {len(es)} run{'s' if len(es) != 1 else ''} ({titles})")
    return " · ".join(parts)
