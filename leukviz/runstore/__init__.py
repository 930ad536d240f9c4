"""Run folders: the run, its state and the one start policy (runs), one checked reader per run file
(runfiles), the one train-or-attach driver every caller uses (driver), training a run in this process
(trainer), launching, stopping and following a training process (supervisor, with this process's launches in
processes), how runs are named (names), and which run a page shows or preselects (best), each run summarised
once for listings (summary), a group of runs split between machines (shards) and trained on a pool of devices
(pool)."""

__all__ = ["best", "driver", "names", "pool", "processes", "runfiles", "runs", "shards", "summary", "supervisor", "trainer"]
