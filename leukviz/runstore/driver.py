"""The one train-or-attach driver: what every caller that needs a run trained does (the CLI's train, --seeds and
--cv, the studies, the Python API, the device pool, the Train page). decide() applies the one start policy
(policy.ensure: cached, attach, resume or train; --force archives) and checks a new start's weights before
anything trains; carry_out() acts on it: nothing for a cached run, follow the process that has the run, or
train it here (trainer.train), in a process of its own followed to its end (LAUNCHED), or in a process of its
own left running (DETACHED, what the pool and the page do: launch()). obtain() is both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from leukviz.runstore import supervisor
from leukviz.runstore.policy import ensure
from leukviz.runstore.runfolder import AlreadyRunning, Run
from leukviz.runstore.states import State

Log = Callable[[str], None]
Hook = Callable[[dict], None]

HERE, LAUNCHED, DETACHED = "here", "launched", "detached"  # where a run that must train trains
WHERE = (HERE, LAUNCHED, DETACHED)


@dataclass(frozen=True)
class Plan:
    """What decide() chose for a run: its action (policy.PLANS) and whether a start resumes."""

    action: str
    resume: bool = False

    @property
    def starts(self) -> bool:
        return self.action in ("train", "resume")


@dataclass
class Outcome:
    """What carry_out() did: the run, the action it took ('attach' too when another process took the run between
    the decision and the start) and what training here raised (recorded in status.json as well; a Stop is
    training.protocol.Stopped)."""

    run: Run
    action: str
    error: Exception | None = None

    @property
    def finished(self) -> bool:
        return self.run.state == State.FINISHED

    def why(self) -> str:
        """Why the run did not finish, in one line: its recorded error, else what training here raised."""
        e = self.error
        return (self.run.status.get("error") or (f"{e.__class__.__name__}: {e}" if e is not None else None)
                or "no reason given")


def decide(run: Run, *, force: bool = False, resume: bool = False) -> Plan:
    """The one start policy (policy.ensure) for this run. force: train again a run that finished (archived first;
    AlreadyRunning while a process has it). resume: continue from the resumable state whenever there is one
    (train --resume: a failed run's too, since a full disk leaves its last complete checkpoint), where the policy
    resumes only a stopped or interrupted run. A new start's weights are checked here (a missing ImageNet file is
    a FileNotFoundError before anything trains or launches)."""
    chosen: list[bool] = []

    def start(r: Run, policy_resumes: bool) -> None:
        if not resume:  # a resume trains what is there; a new start needs its weights first
            from leukviz.models.backbones import ensure_weights
            ensure_weights(r.config.backbone, r.config.weights)
        chosen.append(policy_resumes or resume)

    action = ensure(run, start, force=force)
    return Plan(action, chosen[0] if chosen else False)


def follow(run: Run, progress: Hook | None = None) -> None:
    """Wait for the process that trains this run, each new event to progress."""
    for ev in supervisor.follow(run):
        if progress:
            progress(ev)


def launch(run: Run, plan: Plan, *, device: str = "auto", env: dict[str, str] | None = None,
           nproc: int = 1) -> bool:
    """Start the run's own training process (supervisor.start: supervised, its train.log, detached from this
    one) as the plan says; False when another process has it or is starting it (follow that one instead)."""
    return supervisor.start(run, resume=plan.resume, nproc=nproc, device=device, env=env)


def carry_out(run: Run, plan: Plan, *, where: str = HERE, device: str = "auto", log: Log = print,
              progress: Hook | None = None, env: dict[str, str] | None = None,
              said: Callable[[str], None] = lambda action: None) -> Outcome:
    """Act on a plan: cached, nothing; attach, follow the process that has the run until it ends; resume or
    train, train it where says (HERE: in this process; LAUNCHED: its own process, followed; DETACHED: its own
    process, left running). said(action) is told the action first, and 'attach' again when another process took
    the run meanwhile, for the caller's words. Never raises what training here raised: Outcome.error has it."""
    said(plan.action)
    if plan.action == "cached":
        return Outcome(run, plan.action)
    if plan.action == "attach":
        follow(run, progress)
        return Outcome(run, plan.action)
    if where == HERE:
        from leukviz.runstore import trainer

        try:
            trainer.train(run, resume=plan.resume, device=device, log=log, emit_hook=progress)
        except AlreadyRunning:  # another process took it after the decision: follow it as an attach
            said("attach")
            follow(run, progress)
            return Outcome(run, "attach")
        except Exception as e:  # noqa: BLE001 - recorded in status.json (traceback in train.log) too
            return Outcome(run, plan.action, e)
        return Outcome(run, plan.action)
    if where not in WHERE:
        raise ValueError(f"where is one of {', '.join(WHERE)}, not {where!r}")
    launched = launch(run, plan, device=device, env=env)
    if not launched:  # another process has it or is starting it
        said("attach")
    if where == LAUNCHED:
        follow(run, progress)
    return Outcome(run, plan.action if launched else "attach")


def obtain(run: Run, *, force: bool = False, resume: bool = False, where: str = HERE, device: str = "auto",
           log: Log = print, progress: Hook | None = None, env: dict[str, str] | None = None,
           said: Callable[[str], None] = lambda action: None) -> Outcome:
    """decide() then carry_out(): the run cached, followed, or trained (here or launched) to its end."""
    plan = decide(run, force=force, resume=resume)
    return carry_out(run, plan, where=where, device=device, log=log, progress=progress, env=env, said=said)
