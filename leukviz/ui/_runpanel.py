"""The Train page's run panel: the attached run's state and controls, its repeats, its live curves. Draws only;
what it says comes from app.trainpage and app.dashboard."""

from __future__ import annotations

import streamlit as st

from leukviz.app import charts, dashboard, trainpage
from leukviz.comparison import runtable
from leukviz.core import events, filenames
from leukviz.core.errors import LeukvizError
from leukviz.runstore import names, runs, supervisor
from leukviz.runstore.runfiles import RunFileError
from leukviz.ui._common import figure, page

POLL_SECONDS = 1.0
CURVES_HEIGHT = 400  # px: at full width under the run's status, the live chart fits a laptop screen (1366 x 900)
VERDICT_ICON = {"error": ":material/broken_image:", "warning": ":material/warning:",
                "info": ":material/inventory_2:", "success": ":material/check_circle:"}


def finished_panel(run: runs.Run, evts: list[dict], nproc: int) -> None:
    """A finished run: its verdict (trainpage.finished_verdict), why it ended early, its scores, next steps."""
    verdict = trainpage.finished_verdict(run, dashboard.run_health(run),
                                         run.run_id in st.session_state.get("cached_runs", set()))
    getattr(st, verdict.kind)(dashboard.plain(verdict.text), icon=VERDICT_ICON[verdict.kind])
    early = events.early_stop(evts)
    if early:
        st.info(dashboard.plain(early["reason"][:1].upper() + early["reason"][1:]) + ".", icon=":material/timer_off:")
    m = run.final_metrics()
    a, b, c, e, f = st.columns([1, 1, 1, 1, 2])
    a.metric("Val. accuracy", f"{m['val_acc']:.1%}" if "val_acc" in m else "–")
    b.metric("Weighted F1", f"{m['val_f1']:.3f}" if "val_f1" in m else "–")
    c.metric("Kept epoch", m.get("best_epoch", "–"))
    e.metric("Training time", names.format_duration(runtable.training_seconds(run), short=True))
    with f:
        st.page_link(page("predict"), label="Predict with it", icon=":material/center_focus_strong:")
        st.page_link(page("compare"), label="Compare backbones", icon=":material/compare:")
    g, h, _ = st.columns([1, 1, 3])
    if g.button("Retrain from scratch", icon=":material/restart_alt:", key=f"retrain_{run.run_id}"):
        st.session_state.get("cached_runs", set()).discard(run.run_id)
        supervisor.retrain(run, nproc=nproc)
        st.rerun()
    with h:
        delete_button(run)


def delete_button(run: runs.Run) -> None:
    """Delete a run that is not training: to the archive folder, after a confirmation."""
    with st.popover("Delete run", icon=":material/delete:"):
        st.markdown(f"Move run {run.run_id} to the archive folder? It disappears from every page; its folder can "
                    "be moved back by hand.")
        if st.button("Delete", type="primary", key=f"delete_{run.run_id}"):
            try:
                where = runs.delete(run)
            except (LeukvizError, OSError) as e:
                st.error(dashboard.plain(e))
                return
            st.session_state["train_deleted"] = f"Run {run.run_id} moved to {where}."
            if st.query_params.get("run") == run.run_id:
                del st.query_params["run"]
            st.rerun()


def unfinished_panel(run: runs.Run, status: dict, nproc: int) -> None:
    """A failed, stopped or interrupted run: what happened, and resume, retry or delete."""
    state = status["state"]
    if state == runs.State.FAILED:
        st.error("Training failed:", icon=":material/error:")
    else:
        st.warning(f"Training {state} with {len(run.epochs())} of {run.config.epochs} epochs done.",
                   icon=":material/pause_circle:")
    st.code(status.get("error") or "no error text was recorded", language=None, wrap_lines=True)
    a, b, c, _ = st.columns([1, 1, 1, 2])
    if run.can_resume and a.button("Resume", icon=":material/play_arrow:", key=f"resume_{run.run_id}"):
        supervisor.start(run, resume=True, nproc=nproc)
        st.rerun()
    if b.button("Retry from scratch", icon=":material/restart_alt:", key=f"retry_{run.run_id}"):
        supervisor.start(run, nproc=nproc)
        st.rerun()
    with c:
        delete_button(run)


def show(run_id: str) -> None:
    """Attach the page to another run (the user chose which one to look at: stop following the repeats)."""
    st.query_params["run"] = run_id
    st.session_state["train_follow"] = False
    st.rerun()


def group_panel(run: runs.Run, members: list[runs.Run]) -> None:
    """Repeats of one configuration as one group: each seed's state and progress (Show attaches to it), Stop
    for every seed in flight or queued, and once all are done their mean ± sd and a link to Compare."""
    summary = dashboard.group_summary(members)
    with st.container(border=True):
        st.markdown(f"**Repeats of this configuration: {summary.n} seeds**")
        going = [m for m, state in zip(members, summary.states) if state in runs.ACTIVE]
        if len(going) > 1 and st.button(f"Stop all {len(going)} seeds in flight or queued", icon=":material/stop:",
                                        key=f"stop_group_{run.run_id}"):
            for member in going:  # each stops after its batch (a queued one before it starts), resumable
                supervisor.request_stop(member)
        cols = st.columns(min(summary.n, 5))
        for i, (member, state) in enumerate(zip(members, summary.states)):
            with cols[i % len(cols)]:
                mark = " (shown)" if member.run_id == run.run_id else ""
                st.markdown(f"Seed {member.config.seed}{mark}: {dashboard.seed_state_text(member, state)}")
                if state in runs.ACTIVE:
                    st.progress(dashboard.progress(member.events()).fraction)
                if member.run_id != run.run_id and st.button("Show", key=f"show_seed_{member.run_id}"):
                    show(member.run_id)
        if summary.done and summary.f1 is not None:
            st.markdown(f"Validation weighted F1 **{summary.score_text('f1')}**, accuracy "
                        f"{summary.score_text('acc')} (mean ± sd over seeds).")
            st.page_link(page("compare"), label="Compare this group", icon=":material/compare:",
                         query_params={"runs": ",".join(m.run_id for m in members)})
        if summary.degenerate:
            st.warning(f"{len(summary.degenerate)} of {summary.n} seeds degenerate, left out of the mean: "
                       + ", ".join(f"seed {r.config.seed}" for r in summary.degenerate), icon=":material/warning:")


def run_panel(run: runs.Run, polling: bool, members: list[runs.Run], nproc: int) -> None:
    """The attached run: its state and controls, its repeats (members, found once by the page: the group does
    not change while it trains), then its curves at full width. A fragment re-reads their states every second
    while the run (or a repeat of it) is active, and reruns the whole page when that ends."""
    status = run.status
    state = status["state"]
    group_active = [m for m in members if m.state in runs.ACTIVE]
    if state not in runs.ACTIVE and group_active and st.session_state.get("train_follow", True):
        st.query_params["run"] = group_active[0].run_id  # follow the repeat that trains now
        st.rerun()
    if polling and state not in runs.ACTIVE and not group_active:
        st.rerun()  # the whole page: polling stops and the result's buttons appear
    st.subheader(f"Run {run.run_id} · {names.backbone_title(run.config.backbone)} · seed {run.config.seed}")
    st.caption(dashboard.plain(names.describe_config(run.config)))
    evts = run.events()
    if state in runs.ACTIVE:
        a, b = st.columns([5, 1], vertical_alignment="bottom")
        p = dashboard.progress(evts)
        a.progress(p.fraction, text=trainpage.progress_label(state, p))
        stopping = (run.dir / filenames.STOP).exists()
        # Not while starting: the process clears old stop requests when it takes the run.
        if b.button("Stopping…" if stopping else "Stop", icon=":material/stop:", key=f"stop_{run.run_id}",
                    disabled=stopping or state == runs.State.STARTING, width="stretch"):
            supervisor.request_stop(run)
        if run.config.patience:
            st.caption(f"Early stopping: after {run.config.patience} epochs without a better validation "
                       "weighted F1; the best epoch is kept.")
    elif state == runs.State.FINISHED:
        finished_panel(run, evts, nproc)
    elif state == runs.State.NEW:
        st.info("This run has not started.")
        if st.button("Start it", key=f"begin_{run.run_id}"):
            supervisor.start(run, nproc=nproc)
            st.rerun()
    else:
        unfinished_panel(run, status, nproc)
    figure(charts.training_curves(evts, height=CURVES_HEIGHT), f"curves_{run.run_id}", f"training curves {run.run_id}")
    if len(members) > 1:  # under the curves, which stay in view: the other seeds, and their mean when done
        group_panel(run, members)


def attached_panel(run_id: str | None, all_runs: list[runs.Run], nproc: int) -> None:
    """The attached run's panel, or why there is none. Returns rather than stopping the script: the page
    then always ends as a whole run, and Streamlit clears what the previous run drew and this one did not."""
    if st.session_state.get("train_deleted"):
        st.success(dashboard.plain(st.session_state.pop("train_deleted")), icon=":material/delete:")
    if not run_id:
        st.info("No run yet: choose the settings below and press Start training.")
        return
    try:
        run = runs.get_run(run_id)
    except KeyError:
        st.warning(f"Run {dashboard.plain(run_id)} does not exist (any more).")
        del st.query_params["run"]
        return
    try:
        # Read (not a bare expression: Streamlit's magic would draw it): a run whose config.json is damaged has
        # nothing to show but that.
        _ = run.config
    except RunFileError as e:
        st.error(f"{dashboard.plain(e)}: delete the folder {dashboard.plain(run.dir)}.", icon=":material/broken_image:")
        return
    group = dashboard.repeat_group(run, all_runs)
    active = any(r.state in runs.ACTIVE for r in group)
    st.fragment(run_panel, run_every=POLL_SECONDS if active else None)(run, active, group, nproc)
    others = [r for r in all_runs if r.state in runs.ACTIVE and r.run_id not in {m.run_id for m in group}]
    if others:
        with st.container(border=True):
            st.markdown("**Other runs in progress** (one trains at a time per device; the rest wait, queued)")
            for r in others:
                a, b = st.columns([4, 1])
                a.markdown(f"{dashboard.plain(names.run_name(r))}: {r.state}")
                if b.button("Show", key=f"show_{r.run_id}"):
                    show(r.run_id)
