"""Overview: what leukviz does, the active dataset, the device, and a status card per backbone."""

import streamlit as st

from leukviz import backbones, dashboard, runs
from views._common import active_dataset, device_text, warn_damaged

st.title("leukviz")
titles = ", ".join(spec.title for spec in backbones.BACKBONES.values())
st.markdown(
    f"Fine-tune CNN backbones ({titles}) to tell **leukemic blasts** (`all`) from "
    "**normal cells** (`hem`) in single-cell microscope images, as in the C-NMC 2019 challenge, then "
    "compare them side by side. Start on the built-in demo dataset, or point leukviz at the real one."
)

dataset = active_dataset()
left, right = st.columns(2)
left.metric("Active dataset", dashboard.plain(dashboard.dataset_label(dataset)), border=True)
right.metric("Device", dashboard.plain(device_text()), border=True)

st.subheader("Backbones")
cards = dashboard.backbone_cards(dataset)
any_active = any(c.state in runs.ACTIVE for c in cards)


@st.fragment(run_every=2.0 if any_active else None)
def backbone_cards(polling: bool) -> None:
    """A card per backbone; refreshed every 2 s while one of them trains."""
    cards = dashboard.backbone_cards(dataset)
    if polling and not any(c.state in runs.ACTIVE for c in cards):
        st.rerun()  # the whole page, so the refreshing stops
    for col, card in zip(st.columns(len(cards)), cards):
        with col.container(border=True):
            st.markdown(f"#### {card.title}")
            st.markdown(card.text)
            if card.state == "finished":
                a, b = st.columns(2)
                a.metric("Val. accuracy", f"{card.val_acc:.1%}" if card.val_acc is not None else "–")
                b.metric("Weighted F1", f"{card.val_f1:.3f}" if card.val_f1 is not None else "–")
            elif card.state in runs.ACTIVE and card.epochs:
                st.progress(min(1.0, card.epoch / card.epochs))
            elif card.error:
                st.caption(dashboard.plain(card.error.splitlines()[0][:200]))
            params = {"backbone": card.backbone, **({"run": card.run_id} if card.run_id else {})}
            label = "Train it" if card.state == "none" else "Open the run"
            st.page_link("views/train.py", label=label, icon=":material/arrow_forward:", query_params=params)


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
