"""Comparing runs: seeds pooled, subject-bootstrap intervals, paired tests, the ensemble, the held-out test
set, and the subject and leakage studies."""

__all__ = ["compare", "studies", "testset"]
