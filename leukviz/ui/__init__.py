"""The dashboard: the Streamlit router (`app`) and its thin pages, the only code that imports Streamlit. They draw
what the page models in `leukviz.app` decide. Importing this package loads no Streamlit."""

__all__ = ["_common", "_compare_parts", "_predict_batch", "_runpanel", "app", "compare", "data", "home", "predict", "train"]
