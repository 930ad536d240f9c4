"""Run folders: the run, its state and the one start policy (runs), one checked reader per run file
(runfiles), training a run in this process (trainer), launching, stopping and following a training process
(supervisor, with this process's launches in processes), how runs are named (names), each run summarised once for listings (summary), and a group of runs split between machines (shards)."""

__all__ = ["names", "processes", "runfiles", "pool", "runs", "shards", "summary", "supervisor", "trainer"]
