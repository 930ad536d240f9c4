"""Comparing runs: seeds pooled, subject-bootstrap intervals, paired tests, the ensemble, the held-out test
set, and the studies: what they share (studyruns), the leakage study (leakage), the paper reproduced (paperstudy),
the subject study (subjectstudy) with its scorer and records (subjectscores) and its table (studytext)."""

__all__ = ["compare", "leakage", "paperstudy", "studyruns", "studytext", "subjectscores", "subjectstudy", "testset"]
