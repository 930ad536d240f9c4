"""Training: the loop and fit (engine) with what it trains (state), its one callback protocol (protocol: the
named events) and a run's callbacks (callbacks: record, keep the best, stop on request, stop early, score the
test set), what a run writes (checkpoints), torchrun (distributed), the optimizer and weight average (optim),
the head-only fast path (features); the plain hand-written baseline, and the learning-rate finder, whose sweep
is a callback of the same loop; TensorBoard event files (tblog) when tensorboard is installed."""

__all__ = ["callbacks", "checkpoints", "distributed", "engine", "features", "lrfind", "optim", "plain", "protocol",
           "state", "tblog"]
