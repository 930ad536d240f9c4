"""Training: the loop and fit (engine), the plain hand-written baseline, and the learning-rate finder."""

__all__ = ["engine", "lrfind", "plain"]
