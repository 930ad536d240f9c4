"""Run folders: the run store's public surface (runs) over one module per concept: a run folder and its lock
(runfolder), its states (states), reading and writing its status (status), checking its files (checks), the
one start policy (policy), finding and listing runs (folders), moving runs aside (archive); one checked reader
per run file (runfiles), the one train-or-attach driver every caller uses (driver), training a run in this
process (trainer), the one job supervisor that launches, stops, cancels and follows a run's training process or a
learning-rate sweep (supervisor; sweeps; this process's launches in processes), how runs are named (names), and
which run a page shows or preselects (best), each run summarised once for listings (summary), a group of runs
split between machines (shards) and trained on a pool of devices (pool)."""

__all__ = ["archive", "best", "checks", "driver", "folders", "names", "policy", "pool", "processes", "runfiles",
           "runfolder", "runs", "shards", "states", "status", "summary", "supervisor", "sweeps", "trainer"]
