"""Overview: what leukviz does, the active dataset, the device, and a status card per backbone."""

import streamlit as st

from leukviz.app import dashboard
from leukviz.core.errors import LeukvizError
from leukviz.models import backbones
from leukviz.runstore import names, runs
from leukviz.ui._common import active_dataset, active_split, device_text, page, warn_damaged

st.title("leukviz")
titles = ", ".join(spec.title for spec in backbones.BACKBONES.values())
st.markdown(
    f"Fine-tune CNN backbones ({titles}) to tell **leukemic blasts** (`all`) from "
    "**normal cells** (`hem`) in single-cell microscope images, as in the C-NMC 2019 challenge, then "
    "compare them side by side. Start on the built-in demo dataset, or point leukviz at the real one."
)

dataset = active_dataset()
left, right = st.columns(2)
left.metric("Active dataset", dashboard.plain(names.dataset_label(dataset)), border=True)
right.metric("Device", dashboard.plain(device_text()), border=True)

st.subheader("Backbones")
if st.session_state.get("home_deleted"):
    st.success(dashboard.plain(st.session_state.pop("home_deleted")), icon=":material/delete:")
cards = dashboard.backbone_cards(dataset, split=active_split())
any_active = any(c.state in runs.ACTIVE for c in cards)
unshown = [cards]  # this run's cards, drawn by the fragment's first call below (not read a second time)


@st.fragment(run_every=2.0 if any_active else None)
def backbone_cards(polling: bool) -> None:
    """A card per backbone; refreshed every 2 s while one of them trains (each refresh reads them afresh)."""
    cards = unshown.pop() if unshown else dashboard.backbone_cards(dataset, split=active_split())
    if polling and not any(c.state in runs.ACTIVE for c in cards):
        st.rerun()  # the whole page, so the refreshing stops
    for col, card in zip(st.columns(len(cards)), cards):
        with col.container(border=True):
            st.markdown(f"#### {card.title}")
            st.markdown(card.text)
            if card.state == runs.State.FINISHED:
                acc, f1 = card.scores
                if card.group is not None and card.group.f1 is not None:  # repeats: mean ± sd over seeds
                    st.metric(f"Weighted F1, mean ± sd of {card.group.f1['n']} seeds",
                              card.group.score_text("f1", count=False))
                    st.caption(f"Val. accuracy {card.group.score_text('acc', count=False)}")
                else:
                    a, b = st.columns(2)
                    a.metric("Val. accuracy", acc)
                    b.metric("Weighted F1", f1)
                if card.health is not None and card.health.degenerate:  # the first reason; the run page has all
                    st.warning(f"Degenerate model: {dashboard.plain(card.health.reasons[0])}.", icon=":material/warning:")
                if card.group is not None and card.group.degenerate:
                    st.warning(f"{len(card.group.degenerate)} of {card.group.n} seeds degenerate, left out of "
                               "the mean.", icon=":material/warning:")
            elif card.state in runs.ACTIVE and card.epochs:
                st.progress(min(1.0, card.epoch / card.epochs))
            elif card.error:
                st.caption(dashboard.plain(card.error.splitlines()[0][:200]))
            if card.note:  # why this run: the best of how many (runstore.best, the rule of every page)
                st.caption(dashboard.plain(card.note))
            params = {"backbone": card.backbone, **({"run": card.run_id} if card.run_id else {})}
            label = "Train it" if card.state == "none" else "Open the run"
            st.page_link(page("train"), label=label, icon=":material/arrow_forward:", query_params=params)
            if card.others:
                others_popover(card)
            if card.run_id and card.state not in runs.ACTIVE:
                delete_popover(card.run_id)


def others_popover(card: dashboard.Card) -> None:
    """The backbone's other runs on this dataset, best first, each a link to its page on Train."""
    n = card.n_others
    with st.popover(f"{n} other run{'s' if n != 1 else ''}", icon=":material/list:"):
        for run_id, label in card.others:
            st.page_link(page("train"), label=dashboard.plain(label), query_params={"backbone": card.backbone, "run": run_id})
        if n > len(card.others):
            st.caption(f"The best {len(card.others)} of {n}; `leukviz runs list` lists every run.")


def delete_popover(run_id: str) -> None:
    """Delete the card's run (to the archive folder), after a confirmation; the card then shows the next one."""
    with st.popover("Delete this run", icon=":material/delete:"):
        st.markdown(f"Move run {run_id} to the archive folder? It disappears from every page; its folder can be "
                    "moved back by hand.")
        if st.button("Delete", type="primary", key=f"home_delete_{run_id}"):
            try:
                where = runs.delete(runs.get_run(run_id))
            except (LeukvizError, OSError, KeyError) as e:
                st.error(dashboard.plain(e))
                return
            st.session_state["home_deleted"] = f"Run {run_id} moved to {where}."
            st.rerun()


backbone_cards(any_active)

warn_damaged()

st.subheader("How to use it")
st.markdown(
    "1. **Data**: check the dataset, its subjects and the validation split; switch to your own data.\n"
    "2. **Train**: pick a backbone and a preset and start; the curves update live. A configuration that "
    "already finished is shown at once (cached) instead of training again.\n"
    "3. **Predict**: drop in cell images and read each trained model's class and confidence.\n"
    "4. **Compare**: the backbones side by side on the same data and split."
)
