"""Streamlit-free view models for the dashboard: what the pages show of runs (dashboard), what the Data and
Train pages decide (datapage, trainpage), the Plotly figures (charts) and the HTML report. The pages in
leukviz/ui/ stay thin on top of these."""

__all__ = ["charts", "dashboard", "datapage", "report", "trainpage"]
