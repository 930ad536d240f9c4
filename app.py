"""`streamlit run app.py` in a checkout: the dashboard that ships inside the package (leukviz/ui/app.py, which
`leukviz app` serves once leukviz is installed)."""

from leukviz.ui.app import main

# Streamlit runs this file as __main__; a process that the demo generator spawns imports it again as
# __mp_main__, where drawing the dashboard only logged "missing ScriptRunContext" warnings (160 and more).
if __name__ == "__main__":
    main()
