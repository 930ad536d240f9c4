"""Train: choose a backbone and settings, start a run (or show it at once if cached), watch it learn live. What
the page decides is in app.trainpage; the run panel in _runpanel."""

from pathlib import Path

import streamlit as st

from leukviz.app import charts, dashboard, datapage, trainpage
from leukviz.datasets import data
from leukviz.models import backbones, config
from leukviz.runstore import names, pool, runs, sweeps
from leukviz.training import lrfind
from leukviz.ui._common import active_dataset, figure, page, require_dataset, wanted_split
from leukviz.ui._runpanel import POLL_SECONDS, attached_panel

T = trainpage


def _set(updates: dict, notice: str) -> None:
    st.session_state.update(updates, train_notice=notice)


def apply_defaults() -> None:
    """A new preset: its defaults replace the settings, and the page says which changed."""
    _set(*T.preset_change(st.session_state))


def switch_recipe() -> None:
    """A new backbone or weights choice: the settings its recipe owns change, the others are kept."""
    s = st.session_state
    _set(*T.recipe_switch(s, s.get("train_prev_backbone"), s.get("train_prev_weights")))


def fold_settings() -> None:
    """Start folds the settings away: the run panel above them is then what the screen shows."""
    st.session_state["train_settings_open"] = False


def use_rate(rate: float) -> None:
    """The finder's one click: its suggestion becomes the learning rate."""
    st.session_state["train_lr"] = rate


def first_settings() -> None:
    """The settings on a first visit, and the backbone a link asks for (switched to as a click would)."""
    state = st.session_state
    asked = T.asked_backbone(st.query_params.get("backbone"), state)
    if asked:
        state["train_prev_backbone"], state["train_backbone"] = state.get("train_backbone", asked), asked
        if "train_weights" in state:
            switch_recipe()
    for key, value in T.first_settings(state).items():
        state.setdefault(key, value)
    state["train_prev_backbone"], state["train_prev_weights"] = state["train_backbone"], state["train_weights"]


def weights_field(spec: backbones.BackboneSpec, choice: str) -> str:
    """The weights: the choice, or the file the user names (the page stops until it exists)."""
    if not backbones.imagenet_available(spec):
        st.caption(f"{spec.title}'s ImageNet weights are not in torchvision's cache "
                   f"({dashboard.plain(backbones.weights_cache_path(spec))}), so training from scratch is the "
                   "default. Choosing ImageNet downloads them when the run starts, and fails with a clear "
                   "message when this machine is offline.")
    if choice != "file":
        return choice
    weights = st.text_input("Weights file (.safetensors or a torch state_dict)", key="train_weights_file").strip()
    if not weights:
        st.info("Give the path of a weights file, or choose ImageNet or From scratch.")
        st.stop()
    if not Path(weights).expanduser().is_file():
        st.error(f"No weights file at {dashboard.plain(weights)}.")
        st.stop()
    return str(Path(weights).expanduser())


def numbers() -> dict:
    """The number fields: size, epochs, batch, rate, depth, head epochs, repeats (and how many at once), patience."""
    ranges = dashboard.SETTING_RANGES
    c1, c2, c3 = st.columns(3)
    out = {"image_size": c1.number_input("Image size (px)", *ranges["train_image_size"], step=16, key="train_image_size"),
           "epochs": c2.number_input("Epochs", *ranges["train_epochs"], key="train_epochs"),
           "batch_size": c3.number_input("Batch size", *ranges["train_batch_size"], key="train_batch_size")}
    c4, c5, c6, c7 = st.columns([2, 1, 1, 1])
    out["lr"] = c4.select_slider("Learning rate", T.rates(st.session_state.get("train_lr")),
                                 format_func=lambda v: f"{v:g}", key="train_lr")
    out["finetune"] = c5.selectbox(
        "Fine-tuning depth", config.FINETUNE, format_func=names.FINETUNE_TEXT.get, key="train_finetune",
        help="Staged, for pretrained weights: the head alone first (the backbone frozen), then the whole network, "
             f"each earlier layer group at a lower rate (the earliest at 1/{backbones.DISCRIMINATIVE_SPREAD:g} of "
             "the head's).")
    out["head_epochs"] = (int(c5.number_input("Head-only epochs", *ranges["train_head_epochs"], key="train_head_epochs"))
                          if out["finetune"] == "staged" else None)
    out["repeats"] = int(c6.number_input(
        "Repeats (seeds)", *ranges["train_repeats"], key="train_repeats",
        help="Train this configuration several times, differing only in the random seed, on one validation "
             "split; one per GPU at once, or as many as 'At once' says. Compare then shows the mean ± sd over "
             "seeds: one run's score moves by several points from one seed to the next."))
    out["workers"] = int(c6.number_input(
        "At once", *T.worker_range(), key="train_workers", help=T.WORKERS_HELP)) if T.asks_workers(
        out["repeats"], dashboard.gpu_count()) else 1
    out["patience"] = int(c7.number_input(
        "Early stopping (patience)", *ranges["train_patience"], key="train_patience",
        help="Stop when validation weighted F1 has not improved for this many epochs; 0 is off. With it on, the "
             "best epoch's model is the one kept (whatever the preset keeps otherwise)."))
    return out


def split_section(ds: data.Dataset, cfg: config.RunConfig) -> None:
    """The split this run uses, why it is not the Data page's choice when it is not, and its warnings (each
    fact once: datapage.split_messages)."""
    sp = data.split_of(ds, cfg)
    st.caption(f"Dataset {dashboard.plain(names.dataset_label(cfg.data))}, split "
               f"{dashboard.plain(names.split_text(cfg, sp))} (both chosen on the Data page).")
    wanted = st.session_state.get("split")
    notice = T.split_notice(wanted, cfg.split, data.split_options(ds).get(wanted) if wanted else None)
    if notice:
        st.warning(dashboard.plain(notice), icon=":material/rule:")
    few = datapage.few_subjects_messages(ds, "on the Data page") if cfg.split != "image" else []
    for message in few + datapage.split_messages(ds, sp):
        st.warning(dashboard.plain(message), icon=":material/rule:")


def settings_form(ds: data.Dataset, split: str) -> tuple[config.RunConfig, int, int, int]:
    """The settings widgets; returns the configuration, the number of repeats, of GPU processes and of CPU
    workers for the repeats."""
    first_settings()  # stable widget keys: an edit made while the page reruns is never lost
    state = st.session_state
    backbone = st.segmented_control("Backbone", T.CHOICES, format_func=names.backbone_title, required=True,
                                    key="train_backbone", on_change=switch_recipe)
    state["train_url_backbone"] = backbone
    preset = st.segmented_control("Preset", config.PRESETS, format_func=T.PRESET_TEXT.get, required=True,
                                  key="train_preset", on_change=apply_defaults)
    choice = st.segmented_control("Weights", list(T.WEIGHTS_TEXT), format_func=T.WEIGHTS_TEXT.get,
                                  required=True, key="train_weights", on_change=switch_recipe)
    notice = st.empty()  # always drawn (empty or not): the fields below keep their place between runs
    if state.get("train_notice"):
        notice.info(dashboard.plain(state.pop("train_notice")), icon=":material/tune:")
    weights = weights_field(backbones.get_spec(backbone), choice)
    n = numbers()
    nproc = 1
    if dashboard.gpu_count() > 1:  # DistributedDataParallel through torchrun; the batch size is the global batch
        state.setdefault("train_nproc", dashboard.gpu_count())
        nproc = int(st.number_input("GPUs (torchrun processes)", 1, dashboard.gpu_count(), key="train_nproc"))
    try:
        cfg = config.resolve(backbone, preset, weights, active_dataset(), image_size=int(n["image_size"]),
                             epochs=int(n["epochs"]), batch_size=int(n["batch_size"]), lr=float(n["lr"]),
                             finetune=n["finetune"], split=split, patience=n["patience"],
                             head_epochs=n["head_epochs"])
    except config.ConfigError as e:
        st.error(dashboard.plain(e))
        st.stop()
    split_section(ds, cfg)
    for caution in config.cautions(cfg):
        st.warning(dashboard.plain(caution[:1].upper() + caution[1:]) + ".", icon=":material/warning:")
    with st.popover("Every setting of this run"):  # not an expander: expanders do not nest
        st.json(cfg.to_dict())
    # The settings in the URL: a reload or a bookmark restores them (app.restore_from_url).
    st.query_params.update(dashboard.settings_to_url(state, dashboard.URL_SETTINGS))
    return cfg, n["repeats"], nproc, n["workers"]


@st.fragment(run_every=POLL_SECONDS)
def lr_finder_progress(cfg: config.RunConfig, fingerprint: str) -> None:
    """Polls the sweep running in its own process (progress, ETA, Cancel); the whole page reruns when it ends."""
    where, info = sweeps.status(cfg, fingerprint)
    if where != "running":
        st.rerun()
    fraction, text = lrfind.progress_text(info)
    a, b = st.columns([5, 1], vertical_alignment="bottom")
    a.progress(fraction, text=f"{text} ({cfg.image_size} px, batch {cfg.batch_size}, the settings above)")
    if b.button("Cancel", icon=":material/close:", key="train_lr_cancel", width="stretch"):
        sweeps.cancel(cfg, fingerprint)
        st.rerun()


def lr_finder(cfg: config.RunConfig, fingerprint: str) -> None:
    """The learning-rate finder: sweep the settings on screen in the background, the chart, one click to use
    the suggestion. Cached per configuration and data."""
    where, info = sweeps.status(cfg, fingerprint)
    if where == "running":
        lr_finder_progress(cfg, fingerprint)
        return
    if where == "done":
        advice = lrfind.advise(info, cfg.lr)  # the rate on screen, checked against the sweep
        a, b = st.columns([3, 1], vertical_alignment="center")
        a.caption(f"Learning-rate finder ({info['steps_done']} steps from {info['start']:g} to {info['end']:g}"
                  f"{', stopped when the loss diverged' if info.get('diverged') else ''}): "
                  f"{dashboard.plain(advice.text)}.")
        b.button(f"{'Keep' if advice.keep else 'Use'} {advice.rate:g}", icon=":material/check:", key="train_use_lr",
                 disabled=advice.keep, on_click=None if advice.keep else use_rate, args=(advice.rate,),
                 help="The rate on screen is in the loss's basin." if advice.keep else None)
        figure(charts.lr_find_figure(info, current=cfg.lr), "train_lr_find_chart", f"learning-rate finder {cfg.backbone}")
        return
    if where == "failed":
        st.error("The learning-rate finder failed:")
        st.code(info["error"], language=None, wrap_lines=True)
    if st.button("Find a learning rate", icon=":material/troubleshoot:", key="train_lr_find",
                 help=f"Train briefly from these settings' initial weights with the rate rising from "
                      f"{lrfind.START:g} to {lrfind.END:g} over at most {lrfind.STEPS} steps, and suggest one."):
        sweeps.launch(cfg, fingerprint)
        st.rerun()


def start(cfg: config.RunConfig, n_repeats: int, nproc: int, workers: int, fingerprint: str) -> None:
    """Start (or attach to, or resume) each repeat by the one driver on the device pool (pool.start_group: at
    most one per GPU, or `workers` on CPU, train at once, the others queued); show the first that trains."""
    group = [runs.run_for(one, fingerprint=fingerprint) for one in config.repeats(cfg, n_repeats)]
    actions = pool.start_group(group, pool.worker_envs("auto", workers) if nproc == 1 else [{}], nproc=nproc)
    st.session_state.setdefault("cached_runs", set()).update(r for r, a in actions.items() if a == "cached")
    # The first repeat that trains (a cached one is one click away in the group); the page follows the repeats.
    st.query_params["run"] = next((r for r, a in actions.items() if a != "cached"), next(iter(actions)))
    st.session_state["train_follow"] = True


st.title("Train")
ds = require_dataset()
split, split_why = wanted_split(ds)
if split is None:  # no split at all: say why, where the user can act
    st.error(dashboard.plain(split_why), icon=":material/rule:")
    st.page_link(page("data"), label="Choose another dataset on the Data page", icon=":material/dataset:")
    st.stop()
# The attached run is drawn above the settings (filled in at the end, once the settings have chosen it), so
# after Start its progress, Stop and live curves are on screen without scrolling; Start folds the settings.
panel = st.container()
with st.expander("Settings", expanded=True, key="train_settings_open", on_change="rerun", icon=":material/tune:"):
    cfg, n_repeats, nproc, workers = settings_form(ds, split)
    lr_finder(cfg, ds.fingerprint)
    existing = dashboard.find_run(cfg, ds.fingerprint)
    known = T.known_state(existing)
    sweeping = sweeps.running_any()
    if st.button(T.start_label(n_repeats, cfg.seed), type="primary", icon=":material/play_arrow:", key="train_start",
                 on_click=fold_settings, disabled=sweeping,
                 help="Wait for the learning-rate finder, or cancel it." if sweeping else None):
        start(cfg, n_repeats, nproc, workers, ds.fingerprint)
    elif known in T.HINTS and st.query_params.get("run") != existing.run_id:
        st.caption(T.HINTS[known])

# ---- the attached run: from the URL, so a refresh or a second tab shows the same one
all_runs = dashboard.all_runs()
cfg_id = cfg.identity(ds.fingerprint)
changed = st.session_state.get("train_cfg_id") not in (None, cfg_id)
st.session_state["train_cfg_id"] = cfg_id
shown = T.attach(st.query_params.get("run"), all_runs, existing, changed,
                 T.best_run(all_runs, cfg.backbone, cfg.data, cfg.split))
if shown.run_id and shown.run_id != st.query_params.get("run"):
    st.query_params["run"] = shown.run_id
if shown.cached:  # settings changed to ones that already finished: their results at once, marked cached
    st.session_state.setdefault("cached_runs", set()).add(shown.run_id)
with panel:
    attached_panel(shown.run_id, all_runs, nproc)
