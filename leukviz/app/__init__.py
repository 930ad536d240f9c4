"""Streamlit-free view models for the dashboard: what each page shows (dashboard), the Plotly figures
(charts) and the HTML report. The pages in views/ stay thin on top of these."""

__all__ = ["charts", "dashboard", "report"]
