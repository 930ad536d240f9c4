"""The run store's public surface: what callers outside the run store use as `runs.X` (a run, its states, the
start policy, finding, listing and archiving runs). Each concept lives in its own module, re-imported here by
name; __all__ is that surface, and tests/test_structure.py holds the callers to it (no private name):

- runfolder: `Run`, one run folder's view, and its lock (`AlreadyRunning`)
- states: `State` and the groups of states (`STATES`, `ACTIVE`, `RESUMABLE`)
- status: `read_status` (the one read of a run's status), `write_status`
- checks: `check` (every damaged file of a run, with the repair)
- policy: `plan`, `plan_why`, `ensure` (the one start policy), `PLANS`
- folders: `runs_root`, `run_for`, `get_run`, `list_runs`, `damaged_runs`, `describe`, their errors
- archive: `archive`, `delete`, `delete_refusal` (runs moved aside, never deleted)

Modules of the run store import those modules, not this one."""

from __future__ import annotations

from leukviz.runstore.archive import archive, delete, delete_refusal
from leukviz.runstore.checks import check
from leukviz.runstore.folders import (
    NoSuchRun,
    RunsFolderError,
    damaged_runs,
    describe,
    get_run,
    list_runs,
    run_for,
    runs_root,
)
from leukviz.runstore.policy import PLANS, ensure, plan, plan_why
from leukviz.runstore.runfolder import AlreadyRunning, Run
from leukviz.runstore.states import ACTIVE, RESUMABLE, STATES, State
from leukviz.runstore.status import read_status, write_status

__all__ = ["ACTIVE", "PLANS", "RESUMABLE", "STATES", "AlreadyRunning", "NoSuchRun", "Run", "RunsFolderError",
           "State", "archive", "check", "damaged_runs", "delete", "delete_refusal", "describe", "ensure",
           "get_run", "list_runs", "plan", "plan_why", "read_status", "run_for", "runs_root", "write_status"]
