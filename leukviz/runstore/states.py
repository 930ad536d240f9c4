"""A run's states: the one vocabulary of status.json and of reading a run's status (status.read_status), and
the groups of them every caller decides by (active, resumable). Nothing else; imports nothing."""

from __future__ import annotations

import enum


class State(str, enum.Enum):
    """A run's state. A trainer writes the first six into status.json; reading a run's status (read_status)
    adds two: NEW (never started) and STARTING (a process was launched for it and has not taken the run yet).
    Nothing else. A str: equal to its value, and written as it in JSON."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"
    NEW = "new"
    STARTING = "starting"

    __str__ = str.__str__


STATES = tuple(s.value for s in (State.QUEUED, State.RUNNING, State.FINISHED, State.FAILED, State.STOPPED,
                                  State.INTERRUPTED))  # the ones status.json may hold
ACTIVE = (State.STARTING, State.QUEUED, State.RUNNING)  # a process has the run, or is about to: attach, never launch
RESUMABLE = (State.STOPPED, State.INTERRUPTED)
