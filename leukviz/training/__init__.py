"""Training: the loop and fit (engine) with what it trains (state), its hooks (callbacks: keep the best,
record, stop early, score the test set), what a run writes (checkpoints), torchrun (distributed), the
optimizer and weight average (optim), the head-only fast path (features); the plain hand-written baseline,
and the learning-rate finder on the same loop; TensorBoard event files (tblog) when tensorboard is installed."""

__all__ = ["callbacks", "checkpoints", "distributed", "engine", "features", "lrfind", "optim", "plain", "state", "tblog"]
