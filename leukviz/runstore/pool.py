"""The device pool: a group of runs (a seeds group, a study's runs, the Train page's repeats) trained as many at
once as the machine has devices: one run per GPU (each process sees its GPU alone), or on CPU a few workers that
split the cores. Each run is still an ordinary cached run, started by the one driver (driver.decide, then
driver.launch): its own process, its own train.log, run lock and device queue (paths.DEVICE_SLOT names the
worker's), cached when it finished before, followed when another process trains it. Pool.run waits for the
group and hands a run to each worker that is free; start_group (the page, which cannot wait) launches every run
at once, each queued on its worker's device queue. Stop reaches every run in flight or queued
(supervisor.request_stop) and launches no more."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from leukviz.core import paths
from leukviz.runstore import driver, supervisor, trainer
from leukviz.runstore.runfolder import Run
from leukviz.runstore.states import ACTIVE

Log = Callable[[str], None]


def worker_envs(device: str = "auto", workers: int = 0, gpus: int | None = None) -> list[dict[str, str]]:
    """One environment per worker. With GPUs (device auto or cuda): one worker per visible GPU, each seeing
    only its own (CUDA_VISIBLE_DEVICES). On CPU: `workers` workers (default 1), the cores split between them
    (OMP_NUM_THREADS), each with a device queue of its own."""
    if gpus is None:
        gpus = _gpu_count() if device in ("auto", "cuda") else 0
    if gpus:
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()] or \
            [str(i) for i in range(gpus)]
        return [{"CUDA_VISIBLE_DEVICES": v, paths.DEVICE_SLOT: f"-gpu{v}"} for v in visible[:gpus]]
    n = max(1, workers or 1)
    threads = str(max(1, (os.cpu_count() or 1) // n))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, paths.DEVICE_SLOT: f"-w{k}"} if n > 1 else {}
            for k in range(n)]


def _gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class Pool:
    """Train runs on these workers (worker_envs), at most one run per worker at a time."""

    envs: Sequence[dict[str, str]]
    device: str = "auto"
    poll: float = 0.5
    log: Log = field(default=lambda s: None)
    peak: int = 0  # the most runs this pool had in flight at once
    stopped: bool = False  # a stop reached the runs in flight (should_stop, a signal, Ctrl-C)

    def run(self, group: Sequence[Run], should_stop: Callable[[], bool] = lambda: False) -> dict[str, str]:
        """Train every run of group that is not finished (cached ones are left as they are; one another process
        trains is waited for) and return each run's final state. should_stop: once true, every run in flight is
        asked to stop and nothing more is launched."""
        pending, active, others = list(group), {}, []
        stopping = False
        while pending or active or any(r.state in ACTIVE for r in others):
            if not stopping and (should_stop() or trainer.stop_requested()):
                stopping = self.stopped = True
                pending.clear()
                for r in (*active.values(), *others):
                    supervisor.request_stop(r)
                self.log(f"stop: asked {len(active) + len(others)} run(s) in flight to stop")
            for slot in [s for s in range(len(self.envs)) if s not in active]:
                if not pending:
                    break
                self._start(pending.pop(0), slot, active, others)
            self.peak = max(self.peak, len(active))
            for slot, r in list(active.items()):
                if r.state not in ACTIVE and not r.is_locked():
                    del active[slot]
                    self.log(f"run {r.run_id}: {r.state}")
            time.sleep(self.poll)
        return {r.run_id: r.state for r in group}

    def run_or_stop(self, group: Sequence[Run]) -> dict[str, str]:
        """run(group); Ctrl-C (KeyboardInterrupt, in a library caller) stops every run in flight, each keeping a
        resumable checkpoint, and launches no more. (Under the CLI's process entry a signal is a Stop that run
        sees itself: trainer.stop_requested.)"""
        try:
            return self.run(group)
        except KeyboardInterrupt:
            self.log("stopping every run in flight (each keeps a resumable checkpoint)")
            self.stopped = True
            return self.run(group, should_stop=lambda: True)

    def _start(self, run: Run, slot: int, active: dict, others: list) -> None:
        plan = driver.decide(run)
        if plan.action == "cached":
            return
        if plan.action == "attach" or not driver.launch(run, plan, device=self.device, env=dict(self.envs[slot])):
            others.append(run)  # another process has it (or started it meanwhile): wait for it
            return
        active[slot] = run
        self.log(f"run {run.run_id}: started on worker {slot + 1} of {len(self.envs)}")


def start_group(group: Sequence[Run], envs: Sequence[dict[str, str]], *, device: str = "auto",
                nproc: int = 1) -> dict[str, str]:
    """Launch every run of group that must train at once, without waiting: the k-th launched on worker k mod
    len(envs), where it waits in that worker's device queue (as 'queued', stoppable) until the worker's run
    before it ends, so at most len(envs) train at once. For a caller that cannot wait (the Train page's Repeats).
    Returns each run's action (driver.decide: cached, attach, resume or train)."""
    actions, launched = {}, 0
    for run in group:
        plan = driver.decide(run)
        actions[run.run_id] = plan.action
        if plan.starts:
            if driver.launch(run, plan, device=device, env=dict(envs[launched % len(envs)]), nproc=nproc):
                launched += 1
            else:  # another process started it meanwhile: the page follows that one
                actions[run.run_id] = "attach"
    return actions
