"""The one start policy: what starting a run does now (plan, plan_why: cached / attach / resume / train, and
why) and acting on it (ensure), shared by the CLI's train and --cv, the studies, the pool and the Train page."""

from __future__ import annotations

from typing import Callable

from leukviz.runstore import runfiles
from leukviz.runstore.archive import archive
from leukviz.runstore.checks import check
from leukviz.runstore.runfolder import AlreadyRunning, Run
from leukviz.runstore.states import ACTIVE, RESUMABLE, State

PLANS = ("cached", "attach", "resume", "train")


def plan(run: Run, status: dict | None = None) -> str:
    """What starting this run does now, one of PLANS: "cached" (finished: show it), "attach" (a process has
    it or is starting it), "resume" (stopped or interrupted, with a resumable state) or "train"."""
    return plan_why(run, status)[0]


def plan_why(run: Run, status: dict | None = None) -> tuple[str, str]:
    """plan(run) and why, in words: a finished run whose model is missing or damaged trains again (it is
    not cached), and the reason names the file."""
    state = (status or run.status)["state"]
    if state == "finished":
        broken = [p for p in check(run) if p.file in runfiles.REQUIRED]
        if not broken:
            return "cached", "finished"
        why = f"status.json says finished, but {broken[0].file} is {broken[0].what}"
        return "train", f"{why}: it trains again"
    return _plan_unfinished(run, state), state


def _plan_unfinished(run: Run, state: str) -> str:
    if state in ACTIVE or run.is_locked():
        return "attach"
    if state in RESUMABLE and run.can_resume:
        return "resume"
    return "train"


def ensure(run: Run, start: Callable[[Run, bool], object], *, force: bool = False) -> str:
    """The one start policy (the CLI's train and --cv, studies, the Train page): act on plan(run) and return
    it. "cached": nothing to do (force: its results are archived and it trains again); "attach": a process
    has it, the caller follows it (force: AlreadyRunning, stop it first); "resume" / "train": start(run,
    resume) is called, the caller's way of training (here, launched, or in the background)."""
    action = plan(run)
    if action == "attach":
        if force:
            raise AlreadyRunning(f"run {run.run_id} is training right now; stop it before retraining")
        return action
    if action == "cached" and not force:
        return action
    if force and run.state != State.NEW:
        archive(run)
        action = "train"
    start(run, action == "resume")
    return action
