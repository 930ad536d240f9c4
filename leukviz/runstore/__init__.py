"""Run folders: the run and its state, one checked reader per run file (runfiles), the start policy, launch
and supervision of training processes (runs), and how runs are named (names)."""

__all__ = ["names", "runfiles", "runs"]
