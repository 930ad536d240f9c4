"""The base class of every error leukviz reports to its user, so callers catch one class, not a list.

Each subclass also keeps the built-in base it had (a DataError is a ValueError, an OutOfMemory a
RuntimeError), so an `except ValueError` written before still catches what it caught.
"""

from __future__ import annotations


class LeukvizError(Exception):
    """A problem the user can act on: its message is one actionable line, shown as it is (no class name,
    no traceback)."""
