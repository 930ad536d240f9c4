"""Train: choose a backbone and settings, start a run (or show it at once if cached), watch it learn live."""

from pathlib import Path

import streamlit as st

from leukviz.app import charts, dashboard
from leukviz.comparison import compare
from leukviz.core import events, filenames
from leukviz.datasets import data
from leukviz.models import backbones, config
from leukviz.runstore import names, runs, supervisor
from leukviz.training import lrfind
from leukviz.ui._common import active_dataset, active_split, figure, page, require_dataset

LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
PRESET_TEXT = {"quick": "Quick", "paper": "Paper (seed paper's recipe)", "full": "Full"}
WEIGHTS_TEXT = {"imagenet": "ImageNet", "none": "From scratch", "file": "Weights file"}
POLL_SECONDS = 1.0

SETTINGS = ("image_size", "epochs", "batch_size", "lr")
CURVES_HEIGHT = 400  # px: at full width under the run's status, the live chart fits a laptop screen (1366 x 900)


def default_weights(backbone: str) -> str:
    return "imagenet" if backbones.imagenet_available(backbones.get_spec(backbone)) else "none"


def _defaults(backbone: str, preset: str, weights_choice: str) -> dict:
    return config.preset_defaults(preset, backbone, "none" if weights_choice == "none" else "imagenet")


def apply_defaults() -> None:
    """A new preset: its defaults replace the settings (that is what choosing a preset means), and the page
    says which changed."""
    s = st.session_state
    d = _defaults(s["train_backbone"], s["train_preset"], s["train_weights"])
    changes = {n: (s.get(f"train_{n}"), d[n]) for n in SETTINGS if s.get(f"train_{n}") != d[n]}
    for name in SETTINGS:
        s[f"train_{name}"] = d[name]
    s["train_notice"] = dashboard.changes_text(f"The {PRESET_TEXT[s['train_preset']]} preset", changes)


def switch_recipe() -> None:
    """A new backbone or weights choice: only the settings its recipe owns change (those whose default
    differs between the old and the new choice); the user's other settings are kept, and the page says which."""
    s = st.session_state
    old = _defaults(s.get("train_prev_backbone", s["train_backbone"]), s["train_preset"],
                    s.get("train_prev_weights", s["train_weights"]))
    note = ""
    if s["train_backbone"] != s.get("train_prev_backbone") and s["train_weights"] == "imagenet" \
            and default_weights(s["train_backbone"]) == "none":
        s["train_weights"] = "none"
        note = " Weights: from scratch (its ImageNet weights are not on this machine)."
    new = _defaults(s["train_backbone"], s["train_preset"], s["train_weights"])
    current = {n: s.get(f"train_{n}") for n in SETTINGS}
    changes = dashboard.recipe_changes(old, {n: new[n] for n in SETTINGS}, current)
    for name, (_, value) in changes.items():
        s[f"train_{name}"] = value
    owner = f"{names.backbone_title(s['train_backbone'])}'s recipe"
    if s["train_weights"] != s.get("train_prev_weights"):
        owner = f"{WEIGHTS_TEXT[s['train_weights']]} weights"
    s["train_notice"] = dashboard.changes_text(owner, changes) + note


def fold_settings() -> None:
    """Start folds the settings away: the run panel above them is then what the screen shows."""
    st.session_state["train_settings_open"] = False


def use_rate(rate: float) -> None:
    """The finder's one click: its suggestion becomes the learning rate."""
    st.session_state["train_lr"] = rate


def settings_form() -> tuple[config.RunConfig, int, int]:
    """The settings widgets; returns the configuration, the number of repeats and of GPU processes."""
    # ---- settings: stable widget keys, so an edit made while the page reruns is never lost; choosing a
    # backbone, preset or weights resets the rest to that preset's defaults (in the callbacks above).
    state = st.session_state
    # A link (the overview's, a shared URL) may name the backbone: switch to it as a click would.
    asked = st.query_params.get("backbone")
    if asked in choices and asked != state.get("train_url_backbone") and asked != state.get("train_backbone"):
        state["train_prev_backbone"], state["train_backbone"] = state.get("train_backbone", asked), asked
        if "train_weights" in state:
            switch_recipe()
    state.setdefault("train_backbone", choices[0])
    state.setdefault("train_preset", "quick")
    state.setdefault("train_weights", default_weights(state["train_backbone"]))
    for name, value in _defaults(state["train_backbone"], state["train_preset"], state["train_weights"]).items():
        if name in SETTINGS:
            state.setdefault(f"train_{name}", value)
    for name, value in (("finetune", "full"), ("repeats", 1), ("patience", 0), ("head_epochs", 1)):
        state.setdefault(f"train_{name}", value)
    state["train_prev_backbone"], state["train_prev_weights"] = state["train_backbone"], state["train_weights"]
    backbone = st.segmented_control("Backbone", choices, format_func=names.backbone_title, required=True,
                                    key="train_backbone", on_change=switch_recipe)
    state["train_url_backbone"] = backbone
    spec = backbones.get_spec(backbone)
    preset = st.segmented_control("Preset", config.PRESETS, format_func=PRESET_TEXT.get, required=True,
                                  key="train_preset", on_change=apply_defaults)
    weights_choice = st.segmented_control("Weights", list(WEIGHTS_TEXT), format_func=WEIGHTS_TEXT.get,
                                          required=True, key="train_weights", on_change=switch_recipe)
    notice = st.empty()  # always drawn (empty or not): the fields below keep their place between runs
    if state.get("train_notice"):
        notice.info(dashboard.plain(state.pop("train_notice")), icon=":material/tune:")
    if not backbones.imagenet_available(spec):
        st.caption(f"{spec.title}'s ImageNet weights are not in torchvision's cache "
                   f"({dashboard.plain(backbones.weights_cache_path(spec))}), so training from scratch is the "
                   "default. Choosing ImageNet downloads them when the run starts, and fails with a clear "
                   "message when this machine is offline.")
    weights = weights_choice
    if weights_choice == "file":
        weights = st.text_input("Weights file (.safetensors or a torch state_dict)",
                                key="train_weights_file").strip()
        if not weights:
            st.info("Give the path of a weights file, or choose ImageNet or From scratch.")
            st.stop()
        weights = str(Path(weights).expanduser())
        if not Path(weights).is_file():
            st.error(f"No weights file at {dashboard.plain(weights)}.")
            st.stop()

    c1, c2, c3 = st.columns(3)
    ranges = dashboard.SETTING_RANGES
    image_size = c1.number_input("Image size (px)", *ranges["train_image_size"], step=16, key="train_image_size")
    epochs = c2.number_input("Epochs", *ranges["train_epochs"], key="train_epochs")
    batch_size = c3.number_input("Batch size", *ranges["train_batch_size"], key="train_batch_size")
    c4, c5, c6, c7 = st.columns([2, 1, 1, 1])
    # A rate the finder suggested (use_rate) joins the usual ones, so the slider can hold it.
    rates = sorted({*LEARNING_RATES, *([state["train_lr"]] if "train_lr" in state else [])})
    lr = c4.select_slider("Learning rate", rates, format_func=lambda v: f"{v:g}", key="train_lr")
    finetune = c5.selectbox("Fine-tuning depth", config.FINETUNE, format_func=names.FINETUNE_TEXT.get,
                            key="train_finetune",
                            help="Staged, for pretrained weights: the head alone first (the backbone frozen), then "
                                 "the whole network, each earlier layer group at a lower rate (the earliest at "
                                 f"1/{backbones.DISCRIMINATIVE_SPREAD:g} of the head's).")
    head_epochs = None
    if finetune == "staged":
        head_epochs = int(c5.number_input("Head-only epochs", *ranges["train_head_epochs"], key="train_head_epochs"))
    n_repeats = int(c6.number_input(
        "Repeats (seeds)", *ranges["train_repeats"], key="train_repeats",
        help="Train this configuration several times, differing only in the random seed, on one validation "
             "split; queued one after another. Compare then shows the mean ± sd over seeds: one run's score moves "
             "by several points from one seed to the next."))
    patience = int(c7.number_input(
        "Early stopping (patience)", *ranges["train_patience"], key="train_patience",
        help="Stop when validation weighted F1 has not improved for this many epochs; 0 is off. With it on, the "
             "best epoch's model is the one kept (whatever the preset keeps otherwise)."))
    n_gpu = dashboard.gpu_count()
    nproc = 1
    if n_gpu > 1:  # DistributedDataParallel through torchrun; the batch size above is the global batch
        state.setdefault("train_nproc", n_gpu)
        nproc = int(st.number_input("GPUs (torchrun processes)", 1, n_gpu, key="train_nproc"))
    try:
        cfg = config.resolve(backbone, preset, weights, dataset, image_size=int(image_size), epochs=int(epochs),
                             batch_size=int(batch_size), lr=float(lr), finetune=finetune, split=split,
                             patience=patience, head_epochs=head_epochs)
    except config.ConfigError as e:
        st.error(dashboard.plain(e))
        st.stop()
    ds = require_dataset()
    try:
        sp = data.split_of(ds, cfg)
    except data.DataError as e:
        st.error(f"This split cannot be made: {dashboard.plain(e)}", icon=":material/rule:")
        st.page_link(page("data"), label="Choose another split on the Data page", icon=":material/dataset:")
        st.stop()
    st.caption(f"Dataset {dashboard.plain(names.dataset_label(dataset))}, split "
               f"{dashboard.plain(names.split_text(cfg, sp))} (both chosen on the Data page).")
    chosen_split = st.session_state.get("split")
    if chosen_split != split:
        st.warning(f"The split chosen on the Data page ({dashboard.plain(names.SPLIT_TEXT.get(chosen_split, chosen_split))}) "
                   f"is not possible on this dataset, so this run uses {dashboard.plain(names.SPLIT_TEXT[split])}.",
                   icon=":material/rule:")
    for problem in data.split_problems(ds, sp):
        st.warning(dashboard.plain(problem[:1].upper() + problem[1:]) + ".", icon=":material/rule:")
    if split == "image":
        st.warning("Leaky split: cells of one person on both sides inflate the validation scores.")
    for caution in config.cautions(cfg):
        st.warning(dashboard.plain(caution[:1].upper() + caution[1:]) + ".", icon=":material/warning:")
    with st.popover("Every setting of this run"):  # not an expander: expanders do not nest
        st.json(cfg.to_dict())
    # The settings in the URL: a reload or a bookmark restores them (app.restore_from_url).
    st.query_params.update(dashboard.settings_to_url(state, dashboard.URL_SETTINGS))

    return cfg, n_repeats, nproc


@st.fragment(run_every=POLL_SECONDS)
def lr_finder_progress(cfg: config.RunConfig, fingerprint: str) -> None:
    """Polls the sweep running in its own process (progress, ETA, Cancel); the whole page reruns when it
    ends (its chart appears, Start is enabled again)."""
    where, info = lrfind.status(cfg, fingerprint)
    if where != "running":
        st.rerun()
    fraction, text = lrfind.progress_text(info)
    a, b = st.columns([5, 1], vertical_alignment="bottom")
    a.progress(fraction, text=f"{text} ({cfg.image_size} px, batch {cfg.batch_size}, the settings above)")
    if b.button("Cancel", icon=":material/close:", key="train_lr_cancel", width="stretch"):
        lrfind.cancel(cfg, fingerprint)
        st.rerun()


def lr_finder(cfg: config.RunConfig, fingerprint: str) -> None:
    """The learning-rate finder: a button that sweeps the settings on screen in the background (a minute or
    two on a CPU, so not in the page's process), the chart, and one click to use the suggestion. Cached per
    configuration and data."""
    where, info = lrfind.status(cfg, fingerprint)
    if where == "running":
        lr_finder_progress(cfg, fingerprint)
        return
    if where == "done":
        advice = lrfind.advise(info, cfg.lr)  # the rate on screen, checked against the sweep
        a, b = st.columns([3, 1], vertical_alignment="center")
        a.caption(f"Learning-rate finder ({info['steps_done']} steps from {info['start']:g} to {info['end']:g}"
                  f"{', stopped when the loss diverged' if info.get('diverged') else ''}): "
                  f"{dashboard.plain(advice.text)}.")
        if advice.keep:
            b.button(f"Keep {advice.rate:g}", icon=":material/check:", key="train_use_lr", disabled=True,
                     help="The rate on screen is in the loss's basin.")
        else:
            b.button(f"Use {advice.rate:g}", icon=":material/check:", key="train_use_lr", on_click=use_rate,
                     args=(advice.rate,))
        figure(charts.lr_find_figure(info, current=cfg.lr), "train_lr_find_chart", f"learning-rate finder {cfg.backbone}")
        return
    if where == "failed":
        st.error("The learning-rate finder failed:")
        st.code(info["error"], language=None, wrap_lines=True)
    if st.button("Find a learning rate", icon=":material/troubleshoot:", key="train_lr_find",
                 help=f"Train briefly from these settings' initial weights with the rate rising from "
                      f"{lrfind.START:g} to {lrfind.END:g} over at most {lrfind.STEPS} steps, and suggest one."):
        lrfind.launch(cfg, fingerprint)
        st.rerun()


def finished_panel(run: runs.Run, evts: list[dict]) -> None:
    """A finished run: cached or just finished, healthy or not (dashboard.run_health, the engine's one rule),
    why it ended early (if it did), its scores and next steps, in one row above the curves."""
    health = dashboard.run_health(run)
    if run.damage:  # a file it needs is damaged: Start trains it again (runs.plan_why)
        st.error(dashboard.plain(dashboard.damage_text(run)), icon=":material/broken_image:")
    elif health is not None and health.degenerate:
        st.warning(f"Finished, but the model is degenerate: {dashboard.plain('; '.join(health.reasons))}. Predict "
                   "and Compare leave it out of their defaults and the ensemble; try the preset's learning rate "
                   "or more epochs.", icon=":material/warning:")
    elif run.run_id in st.session_state.get("cached_runs", set()):
        st.info("Cached: this exact configuration had already finished, so nothing was retrained.",
                icon=":material/inventory_2:")
    else:
        st.success("Finished.", icon=":material/check_circle:")
    if health is not None and health.status == "unknown":
        st.info(dashboard.plain(health.text), icon=":material/help:")
    early = events.early_stop(evts)
    if early:
        st.info(dashboard.plain(early["reason"][:1].upper() + early["reason"][1:]) + ".", icon=":material/timer_off:")
    m = run.final_metrics()
    a, b, c, e, f = st.columns([1, 1, 1, 1, 2])
    a.metric("Val. accuracy", f"{m['val_acc']:.1%}" if "val_acc" in m else "–")
    b.metric("Weighted F1", f"{m['val_f1']:.3f}" if "val_f1" in m else "–")
    c.metric("Kept epoch", m.get("best_epoch", "–"))
    e.metric("Training time", names.format_duration(compare.training_seconds(run), short=True))
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
            except (runs.LeukvizError, OSError) as e:
                st.error(dashboard.plain(e))
                return
            st.session_state["train_deleted"] = f"Run {run.run_id} moved to {where}."
            if st.query_params.get("run") == run.run_id:
                del st.query_params["run"]
            st.rerun()


def unfinished_panel(run: runs.Run, status: dict) -> None:
    """A failed, stopped or interrupted run: what happened, and resume, retry or delete."""
    state = status["state"]
    text = status.get("error") or "no error text was recorded"
    if state == runs.State.FAILED:
        st.error("Training failed:", icon=":material/error:")
    else:
        st.warning(f"Training {state} with {len(run.epochs())} of {run.config.epochs} epochs done.",
                   icon=":material/pause_circle:")
    st.code(text, language=None, wrap_lines=True)
    a, b, c, _ = st.columns([1, 1, 1, 2])
    if run.can_resume and a.button("Resume", icon=":material/play_arrow:", key=f"resume_{run.run_id}"):
        supervisor.start(run, resume=True, nproc=nproc)
        st.rerun()
    if b.button("Retry from scratch", icon=":material/restart_alt:", key=f"retry_{run.run_id}"):
        supervisor.start(run, nproc=nproc)
        st.rerun()
    with c:
        delete_button(run)


def group_panel(run: runs.Run, members: list[runs.Run]) -> None:
    """Repeats of one configuration as one group: each seed's state and progress (Show attaches to it), and
    once all are done their mean ± sd and a link to Compare."""
    summary = dashboard.group_summary(members)
    with st.container(border=True):
        st.markdown(f"**Repeats of this configuration: {summary.n} seeds**")
        cols = st.columns(min(summary.n, 5))
        for i, (member, state) in enumerate(zip(members, summary.states)):
            with cols[i % len(cols)]:
                mark = " (shown)" if member.run_id == run.run_id else ""
                st.markdown(f"Seed {member.config.seed}{mark}: {dashboard.seed_state_text(member, state)}")
                if state in runs.ACTIVE:
                    st.progress(dashboard.progress(member.events()).fraction)
                if member.run_id != run.run_id and st.button("Show", key=f"show_seed_{member.run_id}"):
                    st.query_params["run"] = member.run_id
                    st.session_state["train_follow"] = False  # the user chose which one to look at
                    st.rerun()
        if summary.done and summary.f1 is not None:
            st.markdown(f"Validation weighted F1 **{summary.score_text('f1')}**, accuracy "
                        f"{summary.score_text('acc')} (mean ± sd over seeds).")
            st.page_link(page("compare"), label="Compare this group", icon=":material/compare:",
                         query_params={"runs": ",".join(m.run_id for m in members)})
        if summary.degenerate:
            st.warning(f"{len(summary.degenerate)} of {summary.n} seeds degenerate, left out of the mean: "
                       + ", ".join(f"seed {r.config.seed}" for r in summary.degenerate), icon=":material/warning:")


def run_panel(run: runs.Run, polling: bool, members: list[runs.Run]) -> None:
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
        p = dashboard.progress(evts)
        label = {"starting": "Starting the training process…",
                 "queued": "Queued: waiting for the device (another run is training)…"}.get(state, p.text)
        a, b = st.columns([5, 1], vertical_alignment="bottom")
        a.progress(p.fraction, text=label)
        stopping = (run.dir / filenames.STOP).exists()
        # Not while starting: the process clears old stop requests when it takes the run.
        if b.button("Stopping…" if stopping else "Stop", icon=":material/stop:", key=f"stop_{run.run_id}",
                    disabled=stopping or state == runs.State.STARTING, width="stretch"):
            supervisor.request_stop(run)
        if run.config.patience:
            st.caption(f"Early stopping: after {run.config.patience} epochs without a better validation "
                       "weighted F1; the best epoch is kept.")
    elif state == runs.State.FINISHED:
        finished_panel(run, evts)
    elif state == runs.State.NEW:
        st.info("This run has not started.")
        if st.button("Start it", key=f"begin_{run.run_id}"):
            supervisor.start(run, nproc=nproc)
            st.rerun()
    else:
        unfinished_panel(run, status)
    figure(charts.training_curves(evts, height=CURVES_HEIGHT), f"curves_{run.run_id}", f"training curves {run.run_id}")
    if len(members) > 1:  # under the curves, which stay in view: the other seeds, and their mean when done
        group_panel(run, members)


st.title("Train")
dataset, split = active_dataset(), active_split()
choices = list(backbones.BACKBONES)
# The attached run is drawn above the settings (filled in at the end, once the settings have chosen it), so
# after Start its progress, Stop and live curves are on screen without scrolling; Start folds the settings.
panel = st.container()
with st.expander("Settings", expanded=True, key="train_settings_open", on_change="rerun", icon=":material/tune:"):
    cfg, n_repeats, nproc = settings_form()
    ds = require_dataset()
    lr_finder(cfg, ds.fingerprint)
    existing = dashboard.find_run(cfg, ds.fingerprint)
    known = existing.state if existing else "new"
    if known == "finished" and existing.is_damaged:
        known = "damaged"
    hint = {"running": "This configuration is training right now: Start attaches to it.",
            "queued": "This configuration is queued: Start attaches to it.",
            "starting": "This configuration is starting: Start attaches to it.",
            "stopped": "This configuration was stopped: Start resumes it.",
            "interrupted": "This configuration was interrupted: Start resumes it.",
            "damaged": "This configuration finished, but a file of its run is damaged: Start trains it again."}.get(known)
    label = "Start training" if n_repeats == 1 else f"Start {n_repeats} runs (seeds {cfg.seed}–{cfg.seed + n_repeats - 1})"
    sweeping = lrfind.running_any()
    if st.button(label, type="primary", icon=":material/play_arrow:", key="train_start", on_click=fold_settings,
                 disabled=sweeping, help="Wait for the learning-rate finder, or cancel it." if sweeping else None):
        actions = {}
        for one in config.repeats(cfg, n_repeats):
            run = runs.run_for(one, fingerprint=ds.fingerprint)
            action = actions[run.run_id] = runs.ensure(  # the one start policy; trains in the background
                run, lambda r, resume: supervisor.start(r, resume=resume, nproc=nproc))
            if action == "cached":
                st.session_state.setdefault("cached_runs", set()).add(run.run_id)
        # Show the first repeat that trains (a cached one is one click away in the group), and follow the
        # repeats as they take their turn.
        st.query_params["run"] = next((r for r, a in actions.items() if a != "cached"), next(iter(actions)))
        st.session_state["train_follow"] = True
    elif hint and st.query_params.get("run") != existing.run_id:
        st.caption(hint)

# ---- the attached run: from the URL, so a refresh or a second tab shows the same one
run_id = st.query_params.get("run")
all_runs = dashboard.all_runs()
in_progress = [r for r in all_runs if r.state in runs.ACTIVE]
shown_group = set()
if run_id:
    attached = next((r for r in all_runs if r.run_id == run_id), None)
    shown_group = {r.run_id for r in dashboard.repeat_group(attached, all_runs)} if attached else set()
cfg_id = cfg.identity(ds.fingerprint)
settings_changed = st.session_state.get("train_cfg_id") not in (None, cfg_id)
st.session_state["train_cfg_id"] = cfg_id
if existing is not None and known == "finished" and existing.run_id not in shown_group \
        and run_id not in {r.run_id for r in in_progress} and (settings_changed or not run_id):
    # Settings changed to ones that already finished: their results at once, marked cached (a run in
    # progress, a repeat of these settings, or the run a link asked for, stays).
    run_id = st.query_params["run"] = existing.run_id
    st.session_state.setdefault("cached_runs", set()).add(run_id)
if not run_id and in_progress:
    run_id = in_progress[0].run_id
    st.query_params["run"] = run_id
def attached_panel(run_id: str | None) -> None:
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
    except runs.RunFileError as e:
        st.error(f"{dashboard.plain(e)}: delete the folder {dashboard.plain(run.dir)}.", icon=":material/broken_image:")
        return
    group = dashboard.repeat_group(run, all_runs)
    active = any(r.state in runs.ACTIVE for r in group)
    st.fragment(run_panel, run_every=POLL_SECONDS if active else None)(run, active, group)
    others = [r for r in in_progress if r.run_id not in {m.run_id for m in group}]
    if others:
        with st.container(border=True):
            st.markdown("**Other runs in progress** (one trains at a time per device; the rest wait, queued)")
            for r in others:
                a, b = st.columns([4, 1])
                a.markdown(f"{dashboard.plain(names.run_name(r))}: {r.state}")
                if b.button("Show", key=f"show_{r.run_id}"):
                    st.query_params["run"] = r.run_id
                    st.session_state["train_follow"] = False
                    st.rerun()


with panel:
    attached_panel(run_id)
