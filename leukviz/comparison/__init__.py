"""Comparing runs, one concept per module: a run's predictions read and evaluated (evaluation), Compare's per-run
table (runtable), comparable groups and repeats of one configuration (grouping), the ensemble, each group's scores
and every paired comparison (pairing), the words of a comparison (answers), the comparison's report (compare),
calibration rows (calibrationrows), the error gallery (gallery), the held-out test backfill (testset); and the
studies: what they share (studyruns), the leakage study (leakage), the paper reproduced (paperstudy), the subject
study (subjectstudy) with its scorer and records (subjectscores) and its table (studytext)."""

__all__ = ["answers", "calibrationrows", "compare", "ensemble", "evaluation", "gallery", "grouping", "leakage",
           "pairing", "paperstudy", "runtable", "studyruns", "studytext", "subjectscores", "subjectstudy", "testset"]
