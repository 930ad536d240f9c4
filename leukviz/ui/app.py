"""leukviz dashboard: the router (st.navigation over the pages beside this file) and the sidebar every page
shares. `leukviz app` serves this file; `streamlit run app.py` in a checkout calls main() too."""

import streamlit as st

from leukviz.app import charts, dashboard
from leukviz.runstore import names
from leukviz.ui._common import active_dataset, dataset_to_url, device_text, keep_choices, page, warm_imports


def main() -> None:
    """One run of the dashboard: the page chosen, the shared sidebar, the page drawn."""
    st.set_page_config(page_title="leukviz", page_icon=":material/biotech:", layout="wide")

    # The pages live beside this file, not in pages/: Streamlit treats a pages/ folder beside the entry script
    # as a legacy multipage app until this script has run once, so a fresh server's first request for /train
    # would run train.py alone, without this router or its sidebar.
    pages = [
        st.Page(page("home"), title="Overview", icon=":material/home:", default=True),
        st.Page(page("data"), title="Data", icon=":material/dataset:"),
        st.Page(page("train"), title="Train", icon=":material/model_training:"),
        st.Page(page("predict"), title="Predict", icon=":material/center_focus_strong:"),
        st.Page(page("compare"), title="Compare", icon=":material/compare:"),
    ]
    current = st.navigation(pages)

    # Plain keys (not widget keys), so the choices survive moving between pages; the URL's on a first run.
    keep_choices()
    st.session_state.setdefault("dataset", "demo")
    st.session_state.setdefault("split", "subject")
    dataset_to_url()

    with st.sidebar:
        st.caption("Active dataset")
        st.markdown(f"**{dashboard.plain(names.dataset_label(active_dataset()))}**")
        st.caption("Device")
        st.markdown(dashboard.plain(device_text()))
        st.radio("Figure downloads", charts.IMAGE_FORMATS, format_func=str.upper, horizontal=True,
                 key="figure_format",
                 help="What each chart's camera button (top right, on hover) saves: PNG at three times the "
                      "screen's pixels, or SVG (vector, for print). Compare's HTML report offers both under every "
                      "figure.")

    try:
        current.run()
    finally:  # once the page is drawn (or stopped): the URL with what the page chose, the other pages' imports
        dataset_to_url()
        warm_imports()


if __name__ == "__main__":  # streamlit runs this file as __main__ (leukviz app)
    main()
