"""Entry point for `python -m leukviz`: this process owns its signals (cli.main's process_entry)."""

import sys

from leukviz.cli import main

if __name__ == "__main__":
    sys.exit(main(process_entry=True))
