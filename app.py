"""`streamlit run app.py` in a checkout: the dashboard that ships inside the package (leukviz/ui/app.py, which
`leukviz app` serves once leukviz is installed)."""

from leukviz.ui.app import main

main()
