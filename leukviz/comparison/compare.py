"""The comparison of a selection of runs, what Compare and `python -m leukviz compare` report: its groups of
repeats and the ensemble, their scores with intervals, every paired comparison and the notes, refused when the runs
disagree on a cell's true label; and the report as `compare --json` prints it. No Streamlit in here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from leukviz.comparison.answers import SET_TEXT, answer_sentences, pair_matrix
from leukviz.comparison.calibrationrows import calibration_of, calibration_summary
from leukviz.comparison.ensemble import ensemble
from leukviz.comparison.evaluation import Evaluation
from leukviz.comparison.grouping import Repeats, repeat_groups
from leukviz.comparison.pairing import PAIRED_SCORES, Paired, Stats, all_pairs, stats
from leukviz.core.errors import LeukvizError
from leukviz.runstore.names import run_name
from leukviz.scoring import health, metrics


@dataclass
class Report:
    """Everything Compare and `python -m leukviz compare` say about a selection of runs scored on the same
    cells: the groups of repeats and the ensemble, their scores with intervals on validation (and on the
    held-out test set when every run has it), and every paired comparison."""

    groups: list[Repeats]
    stats: list[Stats]
    pairs: list[Paired]
    sets: list[str]
    notes: list[str]
    subjects: dict[str, dict[str, int]] = field(default_factory=dict)  # set -> class -> how many subjects

    def to_dict(self) -> dict:
        return metrics.nan_to_none({
            "sets": self.sets, "notes": self.notes, "subjects": self.subjects,
            "groups": [{"name": g.name, "seeds": g.seeds, "runs": [ev.run.run_id for ev in g.evals],
                        "health": {ev.run.run_id: health.of_run_dir(ev.run.dir).to_dict() for ev in g.evals}}
                       for g in self.groups],
            "scores": [{"model": s.name, "set": s.which, "seeds": s.seeds, "spread": s.spread,
                        "interval": s.interval} for s in self.stats],
            "paired": [{"a": p.a, "b": p.b, "set": p.which, "seeds": p.seeds, **p.result, "verdicts": p.verdicts}
                       for p in self.pairs],
        })


class LabelConflict(LeukvizError, ValueError):
    """Runs that give one cell different true labels: a table and a paired test over them would contradict
    each other."""


def check_labels(evals: Sequence[Evaluation]) -> None:
    """Every cell the runs share has one true label in all of them (validation and test files alike), else
    LabelConflict naming the cells and the runs."""
    for which in ("val", "test"):
        seen: dict[str, tuple[int, str]] = {}
        bad: list[str] = []
        for ev in evals:
            p = getattr(ev, which)
            if p is None:
                continue
            for key, label in zip(p.paths, p.y):
                first = seen.setdefault(str(key), (int(label), ev.run.run_id))
                if first[0] != int(label):
                    bad.append(f"{key} ({first[1]}: {p.classes[first[0]]}, {ev.run.run_id}: {p.classes[int(label)]})")
        if bad:
            raise LabelConflict(f"the runs disagree on the true class of {len(bad)} {SET_TEXT[which]} cell(s), so "
                                f"they cannot be compared: {'; '.join(bad[:3])}{' …' if len(bad) > 3 else ''}")


def build_report(evals: Sequence[Evaluation], n_resamples: int = 2000) -> Report:
    """The report of runs that share their validation cells (one comparable group); runs that disagree on a
    shared cell's label are refused (check_labels)."""
    check_labels(evals)
    groups = repeat_groups(evals)
    ens = ensemble(evals)
    everyone = groups + ([ens] if ens is not None else [])
    sets = ["val"] + (["test"] if evals and all(ev.test is not None for ev in evals) else [])
    notes = []
    for ev in evals:
        h = health.of_run_dir(ev.run.dir)
        if h.degenerate:
            notes.append(f"{run_name(ev.run)} (run {ev.run.run_id}) is degenerate: {'; '.join(h.reasons)}; it is "
                         "compared only because it was chosen")
    if evals and not all(ev.test is not None for ev in evals) and any(ev.test is not None for ev in evals):
        notes.append("some runs have no test predictions: the test columns are left out")
    table = []
    for which in sets:
        for g in everyone:
            st_ = stats(g, which, n_resamples)
            if st_ is None:
                notes.append(f"{g.name} left out of the {SET_TEXT[which]} rows: its runs were not scored on the same "
                             "cells")
            else:
                table.append(st_)
    pairs = [p for which in sets for p in all_pairs(everyone, which, n_resamples)]
    # how few subjects the paired p-values rest on is said by the answer, where the verdict is (answer_sentences)
    for st_ in table[:1]:
        notes.extend(st_.interval.get("notes", []))
    return Report(groups, table, pairs, sets, notes, {which: subjects_per_class(everyone, which) for which in sets})


def subjects_per_class(groups: Sequence[Repeats], which: str) -> dict[str, int]:
    """How many subjects of each class the set holds (the first group's cells; every group has the same), {}
    when the cells carry no subjects."""
    for g in groups:
        p = g.pooled(which)
        if p is not None and p.subjects is not None:
            return {c: len(set(p.subjects[p.y == i])) for i, c in enumerate(p.classes)}
    return {}


def report_json(rep: Report, evals: Sequence[Evaluation]) -> dict:
    """What `compare --json` prints: the report (Report.to_dict), what the page leads with (the answer's
    sentences per set and paired score, and the pairwise matrix, row minus column) and each run's
    calibration (calibration_summary)."""
    out = rep.to_dict()
    out["answer"] = {which: {k: answer_sentences(out, k, which) for k in PAIRED_SCORES} for which in rep.sets}
    out["matrix"] = {which: {k: pair_matrix(out, k, which).to_dict(orient="index") for k in PAIRED_SCORES}
                     for which in rep.sets}
    out["calibration"] = [calibration_summary(calibration_of(ev)) for ev in evals]
    return metrics.nan_to_none(out)
