"""The words of a comparison, once: the scores and sets named, intervals and spreads written, Compare's answer
sentence by sentence, the pairwise matrix, the table of scores, the headline and the report as the command line
prints it. They read a report as plain data (compare.Report.to_dict), so the CLI, `compare --json`, the Compare
page and the HTML report say the same things in the same words."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from leukviz.comparison.pairing import PAIRED_SCORES
from leukviz.runstore import names
from leukviz.scoring import metrics, registry

if TYPE_CHECKING:
    from leukviz.comparison.compare import Report

# The compared scores in words, from the score registry (weighted F1 first: the C-NMC metric).
SCORE_TEXT = {k: registry.text(k) for k in sorted(metrics.SCORES, key=lambda k: k != "weighted_f1")}
SHORT_TEXT = {**SCORE_TEXT, "weighted_f1": "weighted F1 [95 % CI]"}
SET_TEXT = {"val": "validation", "test": "test (held out)"}


def format_interval(score: dict | None, digits: int = 3) -> str:
    if not score or score.get("low") is None or score.get("high") is None:
        return "–"
    return f"{score['low']:.{digits}f} to {score['high']:.{digits}f}"


def format_spread(spread: dict | None, digits: int = 3) -> str:
    if not spread or spread.get("mean") is None:
        return "–"
    if spread.get("sd") is None:
        return f"{spread['mean']:.{digits}f}"
    return f"{spread['mean']:.{digits}f} ± {spread['sd']:.{digits}f}"


def _pair_entry(paired: Sequence[dict], a: str, b: str, which: str, score: str) -> tuple[dict, int] | None:
    """The paired result of a against b (sign 1) or of b against a (sign -1) on one set and score."""
    for p in paired:
        if p["set"] == which and {p["a"], p["b"]} == {a, b} and score in p["scores"]:
            return p["scores"][score], (1 if p["a"] == a else -1)
    return None


def _oriented(entry: dict, sign: int) -> tuple[float, float, float, float | None]:
    """(difference, low, high, p) of a paired entry as a − b (sign -1 turns the stored b − a around)."""
    diff, low, high = (entry.get(k) for k in ("difference", "low", "high"))
    if sign < 0:
        diff, low, high = -diff, -high, -low
    return diff, low, high, entry.get("p_value")


def _difference_text(entry: dict, sign: int) -> str:
    """'+0.030, 95 % CI −0.160 to +0.190, p = 0.62' for a − b (sign -1 turns b − a around)."""
    diff, low, high, p = _oriented(entry, sign)
    ptext = "" if p is None else f", {metrics.p_text(p)}"
    return f"{metrics.signed(diff)}, 95 % CI {metrics.signed(low)} to {metrics.signed(high)}{ptext}"


def _pairs_with(rep: dict, name: str, which: str) -> list[dict]:
    return [p for p in rep["paired"] if p["set"] == which and name in (p["a"], p["b"])]


def answer_sentences(rep: dict, score: str = "weighted_f1", which: str = "val") -> list[str]:
    """Compare's answer for one score and set (Report.to_dict's content), sentence by sentence: the best
    model, and for each other what the paired interval and test support together (metrics.verdict_kind, in
    names.VERDICT_WORDS, the words of the matrix and of the words list); then what the data cannot say: the
    smallest p a permutation over so few subjects can give, and why an interval has no width. E.g.
    "ResNet50 is best on validation weighted F1 (0.739); no clear difference from VGG16 (+0.030, 95 % CI
    −0.160 to +0.190, p = 0.62); it is better than GoogLeNet (...)."."""
    rows = [s for s in rep["scores"] if s["set"] == which and s["spread"].get(score, {}).get("mean") is not None]
    if not rows:
        return []
    best = max(rows, key=lambda s: s["spread"][score]["mean"])
    label = f"{SET_TEXT[which].split(' ')[0]} {SCORE_TEXT[score]}"
    if len(rows) == 1:  # nothing to rank it against
        return [f"{best['model']} scores {best['spread'][score]['mean']:.3f} on {label}: the only model chosen, "
                "so there is nothing to compare it with."]
    text = f"{best['model']} is best on {label} ({best['spread'][score]['mean']:.3f})"
    parts, entries, unpaired = [], [], []
    for other in rows:
        if other is best:
            continue
        found = _pair_entry(rep["paired"], best["model"], other["model"], which, score)
        if found is None:
            paired_at_all = any(other["model"] in (p["a"], p["b"]) for p in _pairs_with(rep, best["model"], which))
            if paired_at_all:  # paired, on other scores: the same cells, this score untested
                unpaired.append(other["model"])
            else:
                parts.append(f"it was not compared with {other['model']} on the same cells")
            continue
        entry, sign = found
        entries.append(entry)
        parts.append(f"{names.lead_text(metrics.verdict_kind(entry), other['model'])} "
                     f"({_difference_text(entry, sign)})")
    if unpaired:
        parts.append(f"{SCORE_TEXT[score]} is not tested in pairs (the paired tests are on "
                     f"{' and '.join(SCORE_TEXT[k] for k in PAIRED_SCORES)}): read the intervals")
    out = [text + "; " + "; ".join(parts) + "."]
    n = min((int(p["n_units"]) for p in _pairs_with(rep, best["model"], which) if p.get("unit") == "subjects"),
            default=0)
    few = names.few_subjects_text(n, SET_TEXT[which].split(' ')[0]) if n else ""
    if few:
        out.append(few[0].upper() + few[1:] + ".")
    if any(e.get("low") is not None and e.get("low") == e.get("high") for e in entries):
        one = [c for c, k in (rep.get("subjects", {}).get(which) or {}).items() if k == 1]
        zero = names.zero_width_text(one)
        out.append(zero[0].upper() + zero[1:] + ".")
    return out


def answer(rep: dict, score: str = "weighted_f1", which: str = "val") -> str:
    """answer_sentences as one text."""
    return " ".join(answer_sentences(rep, score, which))


def pair_matrix(rep: dict, score: str = "weighted_f1", which: str = "val") -> pd.DataFrame:
    """Every pair once: the upper triangle of a models x models table (rows all but the last model, columns
    all but the first, in the report's order), each cell the row's model minus the column's: a mark of what
    the interval and the paired test support together (names.VERDICT_MARK: ✓ better, ~ weak evidence, = no
    clear difference), the difference, its 95 % interval in brackets and p ("✓ +0.050 [+0.010, +0.090]
    p = 0.01"). Half the width of the full square, whose other half only repeats it with the sign turned."""
    models = [s["model"] for s in rep["scores"] if s["set"] == which]
    if not any(p["set"] == which and score in p["scores"] for p in rep["paired"]):
        return pd.DataFrame()  # this score is not tested in pairs (PAIRED_SCORES)
    cells = {}
    for i, a in enumerate(models[:-1]):
        row = {}
        for j, b in enumerate(models[1:], start=1):
            found = _pair_entry(rep["paired"], a, b, which, score) if j > i else None
            if found is None:
                row[b] = "" if j <= i else "–"
                continue
            entry, sign = found
            diff, low, high, p = _oriented(entry, sign)
            row[b] = (f"{names.VERDICT_MARK[metrics.verdict_kind(entry)]} {metrics.signed(diff)} "
                      f"[{metrics.signed(low)}, {metrics.signed(high)}]" + ("" if p is None else f" {metrics.p_text(p)}"))
        cells[a] = row
    return pd.DataFrame.from_dict(cells, orient="index", columns=models[1:])


def stats_table(scores: Sequence[dict], only: str | None = None) -> pd.DataFrame:
    """The Compare table from Report.to_dict()["scores"]: a row per model and set (a model's validation and
    test rows together), each score as mean ± sd over seeds beside its 95 % subject-bootstrap interval (only:
    that score alone, as the page shows it, to fit a laptop screen)."""
    order = list(dict.fromkeys(s["model"] for s in scores))
    rows = []
    for s in sorted(scores, key=lambda s: (order.index(s["model"]), s["set"] != "val")):
        row = {"Model": s["model"], "Set": SET_TEXT.get(s["set"], s["set"]), "Seeds": len(s["seeds"])}
        for k in ([only] if only else metrics.SCORES):
            row[SCORE_TEXT[k]] = format_spread(s["spread"][k])
            row[f"{SCORE_TEXT[k]} 95 % CI"] = format_interval(s["interval"]["scores"].get(k))
        rows.append(row)
    return pd.DataFrame(rows)


def headline(scores: Sequence[dict], score: str = "weighted_f1") -> str:
    """One line: each model's score on validation with its 95 % interval, e.g. "Weighted F1 on validation
    (95 % CI): ResNet50 0.739 (0.61 to 0.84) · GoogLeNet 0.721 (0.60 to 0.82)"."""
    parts = []
    for s in scores:
        if s["set"] != "val":
            continue
        mean = s["spread"][score].get("mean")
        if mean is not None:
            parts.append(f"{s['model']} {mean:.3f} ({format_interval(s['interval']['scores'].get(score), 2)})")
    name = SCORE_TEXT[score]
    return f"{name[0].upper()}{name[1:]} on validation (95 % CI): " + " · ".join(parts) if parts else ""


def report_text(rep: Report) -> str:
    """The report as the command line prints it."""
    lines, whole = [], rep.to_dict()
    for which in rep.sets:
        title = "validation" if which == "val" else "test (held out: scored once, used to choose nothing)"
        part = [s for s in rep.stats if s.which == which]
        if not part:
            continue
        unit = part[0].interval.get("unit", "subjects")
        lines.append(f"{title}: mean ± sd over seeds, and the 95 % interval from a bootstrap over {unit}")
        w = max(18, *(len(s.name) for s in part))
        lines.append(f"  {'model':<{w}} {'seeds':>5}" + "".join(f"  {SHORT_TEXT[k]:<24}" for k in metrics.SCORES))
        for s in part:
            cells = "".join(f"  {format_spread(s.spread[k]):<13} {format_interval(s.interval['scores'].get(k), 2).replace(' to ', '-'):<10}"
                            for k in metrics.SCORES)
            lines.append(f"  {s.name:<{w}} {s.n_seeds:>5}{cells}")
        lines.extend(f"  {line}" for line in answer_sentences(whole, "weighted_f1", which))
        pairs = [p for p in rep.pairs if p.which == which]
        if pairs:
            lines.append(f"  paired ({pairs[0].result.get('test', '')}):")
            lines.extend(f"    {v}" for p in pairs for v in p.verdicts)
        lines.append("")
    lines.extend(f"note: {n}" for n in rep.notes)
    return "\n".join(lines).rstrip()
