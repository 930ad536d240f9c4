"""The training loop's one callback protocol (fastai's), torch-free: the named events the loop announces, the
Callback base with one method per event, Callbacks (a list called as one) and Stopped. The callbacks of a run
are callbacks.py; the loop that announces the events is engine.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leukviz.training.state import TrainState

# The events, in the order the loop announces them. Per run: before_fit; per epoch: before_epoch, then per
# optimizer step before_step and after_step, then after_epoch once the epoch is validated (state.ev, state.probs);
# after_fit once training has ended normally (not on a stop or a failure).
EVENTS = ("before_fit", "before_epoch", "before_step", "after_step", "after_epoch", "after_fit")


class Stopped(Exception):
    """Raised between batches when a stop was requested; the resumable state is already saved."""


class Callback:
    """A listener on the loop: one method per event in EVENTS, each given the run's state. A callback ends the
    epoch after this step with state.stop_epoch = True (the learning-rate finder), the run after this epoch with
    state.stop_fit = True (early stopping), and a stop by raising Stopped. Every callback hears every event."""

    def before_fit(self, state: TrainState) -> None: ...
    def before_epoch(self, state: TrainState) -> None: ...
    def before_step(self, state: TrainState) -> None: ...
    def after_step(self, state: TrainState) -> None: ...
    def after_epoch(self, state: TrainState) -> None: ...
    def after_fit(self, state: TrainState) -> None: ...


class Callbacks:
    """A list of callbacks as one: calling it with an event's name calls that method of each, in order."""

    def __init__(self, cbs: Sequence[Callback] = ()):
        self.cbs = list(cbs)

    def __call__(self, event: str, state: TrainState) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown loop event {event!r}; the events are {', '.join(EVENTS)}")
        for cb in self.cbs:
            getattr(cb, event)(state)
