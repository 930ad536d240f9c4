"""Entry point for `python -m leukviz`."""

import sys

from leukviz.cli import main

if __name__ == "__main__":
    sys.exit(main())
