"""The subject study as text (the CLI's table): per backbone, leukviz, its variants and the plain loop side by
side, their differences, the paired tests' verdicts and each subject's accuracy."""

from __future__ import annotations

from leukviz.comparison.subjectscores import LEUKVIZ, STUDY_METRICS, methods_of
from leukviz.models import backbones


def format_subject_table(res: dict) -> str:
    """The subject study as text: per backbone, leukviz and the plain loop side by side (mean ± sd over
    seeds), their difference, then each subject's accuracy."""
    def ms(d: dict) -> str:
        if d["mean"] is None:
            return "   n/a     "
        return f"{d['mean']:.3f} ± {d['sd']:.3f}" if d["sd"] is not None else f"{d['mean']:.3f} (1 seed)"

    folds = "; ".join(f"fold {f['fold']}: {', '.join(f['val_subjects'])}" for f in res["folds"])
    plain_seeds = res.get("plain_seeds", res["seeds"])
    of_plain = f" (the plain loop: {plain_seeds})" if plain_seeds and plain_seeds != res["seeds"] else ""
    lines = [f"subject-grouped cross-validation on {res['data']}: {len(res['folds'])} folds x {res['seeds']} seeds"
             f"{of_plain}, "
             f"weights {res['weights']}, {res['image_size']} px, {res['epochs']} epochs, preset {res['preset']}",
             f"  validation subjects (never in that fold's training): {folds}",
             *(f"  note: {n}" for n in res["notes"])]

    def diff_label(per: dict) -> str:  # leukviz − plain, on the seeds both ran: named when not all
        seeds = per["difference"]["seeds"]
        return ("diff" if len(seeds) == per[LEUKVIZ]["weighted_f1"]["n"] else
                f"diff (seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))})")

    w = max([8, *(len(m) for per in res["summary"].values() for m in methods_of(per)),
             *(len(diff_label(per)) for per in res["summary"].values() if "difference" in per)])

    def diff_row(label: str, dif: dict) -> str:
        return f"  {'':<10} {label:<{w}} " + " ".join(
            f"{'n/a' if dif[m] is None else f'{dif[m]:+.3f}':<14}" for m in STUDY_METRICS)

    lines.append(f"  {'backbone':<10} {'loop':<{w}} {'weighted F1':<14} {'accuracy':<14} {'hem recall':<14} "
                 f"{'ROC AUC':<14} {'late drop':<14} runs")
    for name, per in res["summary"].items():
        for method in methods_of(per):
            e = per[method]
            lines.append(f"  {backbones.get_spec(name).title:<10} {method:<{w}} "
                         + " ".join(f"{ms(e[m]):<14}" for m in (*STUDY_METRICS, "late_drop")) + f" {e['n_runs']}")
            if method in per.get("variant_differences", {}):
                lines.append(diff_row("  − defaults", per["variant_differences"][method]))
        if "difference" in per:
            lines.append(diff_row(diff_label(per), per["difference"]))
    tests = [(name, t) for name, per in res["summary"].items() for t in per.get("tests", [])]
    if tests:
        lines.append("  paired over subjects (every seed's and fold's cells pooled, so each subject counts once per "
                     "seed; subject bootstrap and permutation test):")
        lines += [f"  {backbones.get_spec(name).title:<10} {t['verdict']}" for name, t in tests]
    subjects = sorted({s for per in res["summary"].values() for m in methods_of(per) for s in per[m]["per_subject"]},
                      key=lambda s: (s[:1].isalpha(), len(s), s))
    lines.append("  accuracy per validation subject (mean over seeds):")
    lines.append(f"  {'':<{11 + w}} " + " ".join(f"{s:>5}" for s in subjects))
    for name, per in res["summary"].items():
        for method in methods_of(per):
            row = per[method]["per_subject"]
            lines.append(f"  {backbones.get_spec(name).title:<10} {method:<{w}} "
                         + " ".join(f"{row[s]:>5.2f}" if s in row else "    -" for s in subjects))
    lines.append("  mean ± sd: over seeds, of each seed's mean over folds. late drop: the largest fall of "
                 "validation F1 between consecutive epochs in the last half of training, averaged over runs. "
                 "Scores are of the model each loop keeps (leukviz: per its select setting; plain: last epoch).")
    return "\n".join(line.rstrip() for line in lines)
