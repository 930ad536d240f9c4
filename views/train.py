"""Train: choose a backbone and settings, start a run (or show it at once if cached), watch it learn live."""

from pathlib import Path

import streamlit as st

from leukviz import backbones, charts, compare, config, dashboard, events, layout, lrfind, runs
from views._common import active_dataset, active_split, require_dataset

LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
PRESET_TEXT = {"quick": "Quick", "paper": "Paper (seed paper's recipe)", "full": "Full"}
WEIGHTS_TEXT = {"imagenet": "ImageNet", "none": "From scratch", "file": "Weights file"}
POLL_SECONDS = 1.0

SETTINGS = ("image_size", "epochs", "batch_size", "lr")
KEEP = {"persist_state": "session"}  # the settings survive a visit to another page
CURVES_HEIGHT = 380  # px: beside the run's status, the live chart fits a laptop screen (1366 x 900) under the title


def default_weights(backbone: str) -> str:
    return "imagenet" if backbones.imagenet_available(backbones.get_spec(backbone)) else "none"


def apply_defaults() -> None:
    """A new preset or weights choice: the preset's defaults for it replace the settings."""
    s = st.session_state
    weights = "none" if s["train_weights"] == "none" else "imagenet"
    d = config.preset_defaults(s["train_preset"], s["train_backbone"], weights)
    for name in SETTINGS:
        s[f"train_{name}"] = d[name]


def new_backbone() -> None:
    st.session_state["train_weights"] = default_weights(st.session_state["train_backbone"])
    apply_defaults()


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
    # A link (the overview's, a shared URL) may name the backbone; the URL then follows the widget.
    asked = st.query_params.get("backbone")
    if asked in names and asked != state.get("train_url_backbone"):
        state["train_backbone"] = asked
        state.pop("train_weights", None)
    state.setdefault("train_backbone", names[0])
    state.setdefault("train_preset", "quick")
    if "train_weights" not in state:
        new_backbone()
    backbone = st.segmented_control("Backbone", names, format_func=dashboard.backbone_title, required=True,
                                    key="train_backbone", on_change=new_backbone, **KEEP)
    st.query_params["backbone"] = state["train_url_backbone"] = backbone
    spec = backbones.get_spec(backbone)
    preset = st.segmented_control("Preset", config.PRESETS, format_func=PRESET_TEXT.get, required=True,
                                  key="train_preset", on_change=apply_defaults, **KEEP)
    weights_choice = st.segmented_control("Weights", list(WEIGHTS_TEXT), format_func=WEIGHTS_TEXT.get,
                                          required=True, key="train_weights", on_change=apply_defaults, **KEEP)
    if not backbones.imagenet_available(spec):
        st.caption(f"{spec.title}'s ImageNet weights are not in torchvision's cache "
                   f"({dashboard.plain(backbones.weights_cache_path(spec))}), so training from scratch is the "
                   "default. Choosing ImageNet downloads them when the run starts, and fails with a clear "
                   "message when this machine is offline.")
    weights = weights_choice
    if weights_choice == "file":
        weights = st.text_input("Weights file (.safetensors or a torch state_dict)",
                                key="train_weights_file", **KEEP).strip()
        if not weights:
            st.info("Give the path of a weights file, or choose ImageNet or From scratch.")
            st.stop()
        weights = str(Path(weights).expanduser())
        if not Path(weights).is_file():
            st.error(f"No weights file at {dashboard.plain(weights)}.")
            st.stop()

    c1, c2, c3 = st.columns(3)
    image_size = c1.number_input("Image size (px)", *config.IMAGE_SIZES, step=16, key="train_image_size", **KEEP)
    epochs = c2.number_input("Epochs", 1, 500, key="train_epochs", **KEEP)
    batch_size = c3.number_input("Batch size", 1, 4096, key="train_batch_size", **KEEP)
    c4, c5, c6, c7 = st.columns([2, 1, 1, 1])
    # A rate the finder suggested (use_rate) joins the usual ones, so the slider can hold it.
    rates = sorted({*LEARNING_RATES, *([state["train_lr"]] if "train_lr" in state else [])})
    lr = c4.select_slider("Learning rate", rates, format_func=lambda v: f"{v:g}", key="train_lr", **KEEP)
    finetune = c5.selectbox("Fine-tuning depth", config.FINETUNE, format_func=dashboard.FINETUNE_TEXT.get,
                            key="train_finetune", **KEEP,
                            help="Staged, for pretrained weights: the head alone first (the backbone frozen), then "
                                 "the whole network, each earlier layer group at a lower rate (the earliest at "
                                 f"1/{backbones.DISCRIMINATIVE_SPREAD:g} of the head's).")
    head_epochs = None
    if finetune == "staged":
        head_epochs = int(c5.number_input("Head-only epochs", 1, 499, value=1, key="train_head_epochs", **KEEP))
    n_repeats = int(c6.number_input(
        "Repeats (seeds)", 1, config.MAX_REPEATS, value=1, key="train_repeats", **KEEP,
        help="Train this configuration several times, differing only in the random seed, on one validation "
             "split; queued one after another. Compare then shows the mean ± sd over seeds: one run's score moves "
             "by several points from one seed to the next."))
    patience = int(c7.number_input(
        "Early stopping (patience)", 0, 500, value=0, key="train_patience", **KEEP,
        help="Stop when validation weighted F1 has not improved for this many epochs; 0 is off. With it on, the "
             "best epoch's model is the one kept (whatever the preset keeps otherwise)."))
    n_gpu = dashboard.gpu_count()
    nproc = 1
    if n_gpu > 1:  # DistributedDataParallel through torchrun; the batch size above is the global batch
        nproc = int(st.number_input("GPUs (torchrun processes)", 1, n_gpu, value=n_gpu, key="train_nproc"))
    try:
        cfg = config.resolve(backbone, preset, weights, dataset, image_size=int(image_size), epochs=int(epochs),
                             batch_size=int(batch_size), lr=float(lr), finetune=finetune, split=split,
                             patience=patience, head_epochs=head_epochs)
    except config.ConfigError as e:
        st.error(dashboard.plain(e))
        st.stop()
    st.caption(f"Dataset {dashboard.plain(dashboard.dataset_label(dataset))}, split "
               f"{dashboard.plain(dashboard.split_text(cfg))} (both chosen on the Data page).")
    if split == "image":
        st.warning("Leaky split: cells of one person on both sides inflate the validation scores.")
    with st.popover("Every setting of this run"):  # not an expander: expanders do not nest
        st.json(cfg.to_dict())

    return cfg, n_repeats, nproc


@st.fragment(run_every=POLL_SECONDS)
def lr_finder_progress(cfg: config.RunConfig, fingerprint: str) -> None:
    """Polls the sweep running in its own process; the whole page reruns when it ends (its chart appears)."""
    where, info = lrfind.status(cfg, fingerprint)
    if where != "running":
        st.rerun()
    done, total = int(info.get("step", 0)), int(info.get("steps", lrfind.STEPS))
    st.progress(done / max(total, 1), text=f"Finding a learning rate: step {done} of at most {total}…")


def lr_finder(cfg: config.RunConfig, fingerprint: str) -> None:
    """The learning-rate finder: a button that sweeps in the background (a minute or two on a CPU, so not in
    the page's process), the chart, and one click to use the suggestion. Cached per configuration and data."""
    where, info = lrfind.status(cfg, fingerprint)
    if where == "running":
        lr_finder_progress(cfg, fingerprint)
        return
    if where == "done":
        suggestion = float(f"{info['suggestion']:.2g}")
        a, b = st.columns([3, 1], vertical_alignment="center")
        a.caption(f"Learning-rate finder ({info['steps_done']} steps from {info['start']:g} to {info['end']:g}"
                  f"{', stopped when the loss diverged' if info.get('diverged') else ''}). Suggested: "
                  f"{dashboard.plain(lrfind.RULE)}.")
        b.button(f"Use {suggestion:g}", icon=":material/check:", key="train_use_lr", on_click=use_rate,
                 args=(suggestion,), disabled=st.session_state.get("train_lr") == suggestion)
        st.plotly_chart(charts.lr_find_figure(info), key="train_lr_find_chart")
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
    """A finished run: cached or just finished, why it ended early (if it did), its scores and next steps."""
    if run.damage:  # a file it needs is damaged: Start trains it again (runs.plan_why)
        st.error(dashboard.plain(dashboard.damage_text(run)), icon=":material/broken_image:")
    elif run.run_id in st.session_state.get("cached_runs", set()):
        st.info("Cached: this exact configuration had already finished, so nothing was retrained.",
                icon=":material/inventory_2:")
    else:
        st.success("Finished.", icon=":material/check_circle:")
    early = events.early_stop(evts)
    if early:
        st.info(dashboard.plain(early["reason"][:1].upper() + early["reason"][1:]) + ".", icon=":material/timer_off:")
    m = run.final_metrics()
    a, b = st.columns(2)
    a.metric("Val. accuracy", f"{m['val_acc']:.1%}" if "val_acc" in m else "–")
    b.metric("Weighted F1", f"{m['val_f1']:.3f}" if "val_f1" in m else "–")
    c, e = st.columns(2)
    c.metric("Best epoch", m.get("best_epoch", "–"))
    e.metric("Training time", dashboard.format_duration(compare.training_seconds(run)))
    st.page_link("views/predict.py", label="Predict with it", icon=":material/center_focus_strong:")
    st.page_link("views/compare.py", label="Compare backbones", icon=":material/compare:")
    if st.button("Retrain from scratch", icon=":material/restart_alt:", key=f"retrain_{run.run_id}"):
        st.session_state.get("cached_runs", set()).discard(run.run_id)
        runs.retrain(run, nproc=nproc)
        st.rerun()


def unfinished_panel(run: runs.Run, status: dict) -> None:
    """A failed, stopped or interrupted run: what happened, and resume or retry."""
    state = status["state"]
    text = status.get("error") or "no error text was recorded"
    if state == "failed":
        st.error("Training failed:", icon=":material/error:")
    else:
        st.warning(f"Training {state} with {len(run.epochs())} of {run.config.epochs} epochs done.",
                   icon=":material/pause_circle:")
    st.code(text, language=None, wrap_lines=True)
    if run.can_resume and st.button("Resume", icon=":material/play_arrow:", key=f"resume_{run.run_id}"):
        runs.start(run, resume=True, nproc=nproc)
        st.rerun()
    if st.button("Retry from scratch", icon=":material/restart_alt:", key=f"retry_{run.run_id}"):
        runs.start(run, nproc=nproc)
        st.rerun()


def run_panel(run: runs.Run, polling: bool) -> None:
    """The attached run: its state and controls beside its curves. A fragment re-reads the run folder every
    second while the run is active, and reruns the whole page when that ends."""
    status = run.status
    state = status["state"]
    if polling and state not in runs.ACTIVE:
        st.rerun()  # the whole page: polling stops and the result's buttons appear
    st.subheader(f"Run {run.run_id} · {dashboard.backbone_title(run.config.backbone)}")
    st.caption(dashboard.plain(dashboard.describe_config(run.config)))
    evts = run.events()
    left, right = st.columns([1, 2])
    with left:
        if state in runs.ACTIVE:
            p = dashboard.progress(evts)
            label = {"starting": "Starting the training process…",
                     "queued": "Queued: waiting for the device (another run is training)…"}.get(state, p.text)
            st.progress(p.fraction, text=label)
            stopping = (run.dir / layout.STOP).exists()
            # Not while starting: the process clears old stop requests when it takes the run.
            if st.button("Stopping…" if stopping else "Stop", icon=":material/stop:", key=f"stop_{run.run_id}",
                         disabled=stopping or state == "starting"):
                runs.request_stop(run)
            if run.config.patience:
                st.caption(f"Early stopping: after {run.config.patience} epochs without a better validation "
                           "weighted F1; the best epoch is kept.")
        elif state == "finished":
            finished_panel(run, evts)
        elif state == "new":
            st.info("This run has not started.")
            if st.button("Start it", key=f"begin_{run.run_id}"):
                runs.start(run, nproc=nproc)
                st.rerun()
        else:
            unfinished_panel(run, status)
    right.plotly_chart(charts.training_curves(evts, height=CURVES_HEIGHT), key=f"curves_{run.run_id}")


st.title("Train")
dataset, split = active_dataset(), active_split()
names = list(backbones.BACKBONES)
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
    if st.button(label, type="primary", icon=":material/play_arrow:", key="train_start", on_click=fold_settings):
        started = []
        for i, one in enumerate(config.repeats(cfg, n_repeats)):
            run = runs.run_for(one, fingerprint=ds.fingerprint)
            if i == 0:
                st.query_params["run"] = run.run_id
            action = runs.plan(run)
            if action == "cached":
                st.session_state.setdefault("cached_runs", set()).add(run.run_id)
            elif action in ("resume", "train"):
                runs.start(run, resume=action == "resume", nproc=nproc)
            started.append(action)
        if n_repeats > 1:
            st.caption(f"{n_repeats} runs of this configuration: {started.count('cached')} cached, the others "
                       "queued one after another (one trains at a time per device).")
    elif hint and st.query_params.get("run") != existing.run_id:
        st.caption(hint)

# ---- the attached run: from the URL, so a refresh or a second tab shows the same one
run_id = st.query_params.get("run")
in_progress = [r for r in dashboard.all_runs() if r.state in runs.ACTIVE]
if existing is not None and known == "finished" and run_id != existing.run_id \
        and run_id not in {r.run_id for r in in_progress}:
    # These settings already finished: their results on arrival, marked cached (a run in progress stays).
    run_id = st.query_params["run"] = existing.run_id
    st.session_state.setdefault("cached_runs", set()).add(run_id)
if not run_id and in_progress:
    run_id = in_progress[0].run_id
    st.query_params["run"] = run_id
with panel:
    if not run_id:
        st.info("No run yet: choose the settings below and press Start training.")
        st.stop()
    try:
        run = runs.get_run(run_id)
    except KeyError:
        st.warning(f"Run {dashboard.plain(run_id)} does not exist (any more).")
        del st.query_params["run"]
        st.stop()
    try:
        # Read (not a bare expression: Streamlit's magic would draw it): a run whose config.json is damaged has
        # nothing to show but that.
        _ = run.config
    except runs.RunFileError as e:
        st.error(f"{dashboard.plain(e)}: delete the folder {dashboard.plain(run.dir)}.", icon=":material/broken_image:")
        st.stop()
    active = run.state in runs.ACTIVE
    st.fragment(run_panel, run_every=POLL_SECONDS if active else None)(run, active)
    others = [r for r in in_progress if r.run_id != run.run_id]
    if others:
        with st.container(border=True):
            st.markdown("**Other runs in progress** (one trains at a time per device; the rest wait, queued)")
            for r in others:
                a, b = st.columns([4, 1])
                a.markdown(f"{dashboard.plain(dashboard.run_name(r))}: {r.state}")
                if b.button("Show", key=f"show_{r.run_id}"):
                    st.query_params["run"] = r.run_id
                    st.rerun()
