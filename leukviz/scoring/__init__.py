"""Numbers from predictions, torch-free: the predictions file (predictions), the metrics (weighted F1,
intervals, paired tests), the temperature calibration, and a finished run's health (degenerate or not)."""

__all__ = ["calibration", "health", "metrics", "predictions"]
