"""Tests for leukviz.events: the readers see a resumed run as one history, the later records winning."""

from leukviz.core import events


def resumed_run() -> list[dict]:
    """Two epochs of 2 steps; stopped at epoch 2 step 1, then resumed there (epoch 2 written twice)."""
    return [
        {"type": events.START, "epoch": 0, "step": 0, "epochs": 2, "time": 0.0},
        {"type": events.BATCH, "epoch": 1, "step": 1, "steps": 2, "loss": 0.9},
        {"type": events.BATCH, "epoch": 1, "step": 2, "steps": 2, "loss": 0.8},
        {"type": events.EPOCH, "epoch": 1, "epochs": 2, "val_f1": 0.5},
        {"type": events.BATCH, "epoch": 2, "step": 1, "steps": 2, "loss": 0.7},
        {"type": events.BATCH, "epoch": 2, "step": 2, "steps": 2, "loss": 0.6},
        {"type": events.EPOCH, "epoch": 2, "epochs": 2, "val_f1": 0.6},
        {"type": events.RESUME, "epoch": 1, "step": 1, "epochs": 2, "time": 5.0},
        {"type": events.BATCH, "epoch": 2, "step": 2, "steps": 2, "loss": 0.65},
        {"type": events.EPOCH, "epoch": 2, "epochs": 2, "val_f1": 0.7},
    ]


def test_epoch_and_batch_events_one_per_epoch_and_step_the_later_winning():
    evs = resumed_run()
    assert [(e["epoch"], e["val_f1"]) for e in events.epoch_events(evs)] == [(1, 0.5), (2, 0.7)]
    assert [((e["epoch"], e["step"]), e["loss"]) for e in events.batch_events(evs)] == [
        ((1, 1), 0.9), ((1, 2), 0.8), ((2, 1), 0.7), ((2, 2), 0.65)]
    assert events.epoch_events([{"type": events.EPOCH}, {"type": "other", "epoch": 1}]) == []


def test_latest_start_is_the_last_start_or_resume():
    evs = resumed_run()
    assert events.latest_start(evs)["type"] == events.RESUME
    assert events.latest_start(evs[:7])["type"] == events.START
    assert events.latest_start(evs[1:7]) is None


def test_until_resume_point_drops_what_comes_after_it():
    kept = events.until_resume_point(resumed_run()[:7], epoch=2, step=1)
    assert [(e["type"], e["epoch"], e.get("step")) for e in kept] == [
        (events.START, 0, 0), (events.BATCH, 1, 1), (events.BATCH, 1, 2), (events.EPOCH, 1, None),
        (events.BATCH, 2, 1)]


def test_the_event_schema_has_one_owner():
    """Every event type has its fields in events.FIELDS, and events.problem is the one check of them (the run
    folder's reader skips what it names)."""
    from leukviz.core import events

    assert set(events.FIELDS) == set(events.TYPES)
    assert events.problem({"type": events.BATCH, "epoch": 1, "step": True, "steps": 3, "loss": 0.1, "acc": 0.2})
    said = events.problem({"type": events.EPOCH, "epoch": -1})  # names the event's type, the field, the value
    assert said and events.EPOCH in said and '"epoch"' in said and "-1" in said
    assert events.problem({"type": events.START, "epoch": 0, "epochs": 3}) is None
    assert events.problem({"type": "future-kind"}) is None
