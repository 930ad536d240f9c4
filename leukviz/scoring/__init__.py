"""Numbers from predictions, torch-free: the predictions file (predictions), the scalar scores (scores), the
score registry (registry: one spec per score), calibration-like scores (reliability), subject-bootstrap
intervals (bootstrap), paired tests (paired), the words of a verdict (wording), all re-exported by metrics;
the temperature calibration, and a finished run's health (degenerate or not)."""

__all__ = ["bootstrap", "calibration", "health", "metrics", "paired", "predictions", "registry", "reliability",
           "scores", "wording"]
