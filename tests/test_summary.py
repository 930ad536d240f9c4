"""A run summarised once (runstore.summary): stored in the run folder, trusted while its source files are
unchanged, computed again when one changes; listings read it instead of the predictions."""

from __future__ import annotations

import json
import os
import time

import pandas as pd
import pytest

from helpers import make_run
from leukviz.core import filenames
from leukviz.runstore import runfiles, runs, summary


@pytest.fixture(autouse=True)
def fresh_memo():
    """Each test starts as a new process would: no summary remembered in memory."""
    summary._MEMO.clear()
    yield
    summary._MEMO.clear()


def _forget():
    summary._MEMO.clear()


def test_a_finished_run_is_summarised_once_and_then_read_back(tmp_path, monkeypatch):
    run = make_run(tmp_path, state="finished")
    s = summary.stored(run)
    assert (run.dir / filenames.SUMMARY).exists()
    assert s["state"] == "finished" and s["health"]["health"] == "healthy"
    assert s["final_metrics"]["val_f1"] == pytest.approx(0.74)
    assert s["counts"]["val_cells"] == 8 and s["counts"]["epochs"] == 2
    _forget()
    reads = []
    monkeypatch.setattr(runfiles, "check_predictions", lambda *a: reads.append(a))
    monkeypatch.setattr(summary, "compute", lambda r: pytest.fail("a fresh stored summary was computed again"))
    row = summary.describe(summary.SummarisedRun(run.dir))
    assert row["health"] == "healthy" and row["val_f1"] == pytest.approx(0.74) and not row["damaged"]
    assert reads == []  # no predictions file was read


def _degenerate_predictions(run):
    """Rewrite the validation predictions so the model calls every cell 'all' (a new file: new inode)."""
    df = pd.read_csv(run.dir / filenames.PREDICTIONS)
    df["prob_all"], df["prob_hem"], df["pred"] = 0.9, 0.1, 1
    tmp = run.dir / "tmp.csv"
    df.to_csv(tmp, index=False)
    os.replace(tmp, run.dir / filenames.PREDICTIONS)


def test_a_summary_goes_stale_when_a_source_file_changes(tmp_path):
    run = make_run(tmp_path, state="finished")
    assert summary.health(run).status == "healthy"
    before = json.loads((run.dir / filenames.SUMMARY).read_text())
    _degenerate_predictions(run)
    _forget()  # as another process would read it: only the stored file, now stale
    h = summary.health(run)
    assert h.degenerate and "calls every validation cell all" in h.reasons[0]
    after = json.loads((run.dir / filenames.SUMMARY).read_text())
    assert after["sources"][filenames.PREDICTIONS] != before["sources"][filenames.PREDICTIONS]
    assert after["health"]["health"] == "degenerate"  # stored again


def test_the_memo_of_this_process_goes_stale_too(tmp_path):
    """Within one process (a page rerun) a change is seen at once: every read stats the sources."""
    run = summary.SummarisedRun(make_run(tmp_path, state="finished").dir)
    assert not run.is_damaged and run.is_usable
    (run.dir / filenames.CHECKPOINT).write_bytes(b"not weights")  # same inode, other size
    assert run.is_damaged and not run.is_usable
    assert any(filenames.CHECKPOINT in p for p in run.problems)


def test_a_same_size_rewrite_in_the_same_tick_is_seen(tmp_path):
    """An atomic replace (how every run file is written) is a new inode, even with equal size and mtime."""
    run = make_run(tmp_path, state="finished")
    summary.stored(run)
    path = run.dir / filenames.SIDECAR
    st = path.stat()
    meta = json.loads(path.read_text())
    meta["metrics"]["val_f1"] = 0.11  # same length as 0.74
    (run.dir / "x.json").write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(run.dir / "x.json", path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    _forget()
    assert summary.stored(run)["final_metrics"]["val_f1"] == pytest.approx(0.11)


def test_a_damaged_stored_summary_is_computed_again(tmp_path):
    run = make_run(tmp_path, state="finished")
    summary.stored(run)
    (run.dir / filenames.SUMMARY).write_text("{not json")
    _forget()
    assert summary.stored(run)["health"]["health"] == "healthy"
    assert json.loads((run.dir / filenames.SUMMARY).read_text())["version"] == summary.VERSION


def test_an_unfinished_run_reads_its_state_live(tmp_path):
    """A 'running' status nobody holds the lock of is interrupted: the state never comes from a summary, and a
    run in flight stores none (its files change every batch)."""
    run = make_run(tmp_path, state="running")
    sr = summary.SummarisedRun(run.dir)
    assert sr.state == "interrupted" and sr.health is None
    assert not (run.dir / filenames.SUMMARY).exists()
    row = summary.describe(sr)
    assert row["state"] == "interrupted" and row["health"] is None


def test_listing_matches_the_files(tmp_path):
    """The summary's row for `runs list` says what runs.describe says reading every file."""
    old = make_run(tmp_path, state="finished", seed=1, created=time.time() - 100)
    new = make_run(tmp_path, state="failed", seed=2)
    listed = summary.list_runs(tmp_path)
    assert [r.run_id for r in listed] == [new.run_id, old.run_id]  # newest first, as runs.list_runs
    for r in listed:
        row, plain = summary.describe(r), runs.describe(runs.Run(r.dir))
        assert {k: row[k] for k in plain} == plain


def test_a_read_only_run_folder_is_summarised_without_storing(tmp_path):
    run = make_run(tmp_path, state="finished")
    os.chmod(run.dir, 0o555)
    try:
        if os.access(run.dir, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        assert summary.stored(run)["state"] == "finished"
        assert not (run.dir / filenames.SUMMARY).exists()
    finally:
        os.chmod(run.dir, 0o755)


def test_the_trainer_stores_the_summary_when_a_run_finishes(trained_run, tiny_data):
    from helpers import tiny_config

    run = trained_run(tiny_config("googlenet", tiny_data))
    stored = json.loads((run.dir / filenames.SUMMARY).read_text())
    assert stored["state"] == "finished"
    assert stored["sources"][filenames.STATUS] == summary.stamps(run.dir)[filenames.STATUS]


def test_cloned_runs_are_listed_as_finished_runs_of_their_own(tmp_path):
    """benchmarks.scale's clones (hard links and a config of their own): each its own run id and summary."""
    from leukviz.benchmarks import scale

    src = make_run(tmp_path / "src", state="finished")
    made = scale.clone_runs(src.dir, tmp_path / "runs", 5)
    listed = summary.list_runs(tmp_path / "runs")
    assert len({r.run_id for r in listed}) == 5 == len(made)
    assert all(r.is_usable and r.health.status == "healthy" for r in listed)
    assert (made[0] / filenames.CHECKPOINT).stat().st_ino == (src.dir / filenames.CHECKPOINT).stat().st_ino


def test_scale_ratios_are_to_the_smallest_size():
    from leukviz.benchmarks import scale

    rows = scale.ratios([{"files": 10, "seconds": 2.0}, {"files": 100, "seconds": 5.0}], ("seconds",), "files")
    assert rows[1]["seconds_x"] == 2.5 and rows[1]["files_x"] == 10 and rows[0]["seconds_x"] == 1


def test_a_listing_stats_each_run_once_and_the_next_listing_sees_a_change(tmp_path, monkeypatch):
    """A listing holds each finished run's summary as it read it: one stat of its sources per run, however many
    properties a page or `runs list` reads; a file changed after it (here a damaged checkpoint) is seen by the
    next listing, as by a run read afresh."""
    made = [make_run(tmp_path, state="finished", seed=s) for s in (1, 2, 3)]
    summary.list_runs(tmp_path)  # the first listing computes and stores the summaries
    calls = []
    real = summary.stamps
    monkeypatch.setattr(summary, "stamps", lambda d: calls.append(d) or real(d))
    listed = summary.list_runs(tmp_path)
    for r in listed:
        for _ in range(3):
            assert r.is_usable and not r.is_damaged and r.health.status == "healthy"
            assert r.state == "finished" and r.config.seed in (1, 2, 3) and r.final_metrics()["val_f1"] > 0
            summary.describe(r)
    assert len(calls) == len(made) == 3
    (made[0].dir / filenames.CHECKPOINT).write_bytes(b"not weights")
    again = {r.run_id: r for r in summary.list_runs(tmp_path)}
    assert again[made[0].run_id].is_damaged and not again[made[0].run_id].is_usable
    assert summary.describe(again[made[0].run_id])["damaged"]
    assert not again[made[1].run_id].is_damaged
    assert summary.SummarisedRun(made[0].dir).is_damaged  # a run read afresh sees it too


def test_a_listed_run_that_is_not_finished_is_read_afresh(tmp_path):
    """Only finished runs are held by a listing: a run in another state is read at every access, so one that
    finishes while a page holds its listing shows its checkpoint and metrics at once."""
    run = make_run(tmp_path, state="stopped")
    listed = summary.list_runs(tmp_path)[0]
    assert listed.state == "stopped" and listed._held is None
    runs.write_status(run, "finished")
    assert listed.state == "finished" and listed.is_usable
