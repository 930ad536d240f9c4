"""Durations in words, written once for every page, the CLI, the report and the progress lines: 'about 2 min 05 s
left', '125 s' in a narrow column, '1 min 10 s' as a rough estimate."""

from __future__ import annotations

import math


def format_duration(seconds: float | None, short: bool = False) -> str:
    """'2 min 05 s'; short (for a metric's narrow column): '125 s', '12.5 min', '3.2 h'."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if short:
        return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def about(seconds: float) -> str:
    """A rough duration for an estimate, format_duration's words rounded to what an estimate can say: '45 s'
    (to 5 s, at least 5 s), '1 min 10 s' or '3 min' (to 10 s), '1 h 05 min' (to the minute)."""
    seconds = max(0.0, float(seconds))
    step = 5 if 5 * round(seconds / 5) < 60 else 10 if 10 * round(seconds / 10) < 3600 else 60
    return format_duration(max(5, step * round(seconds / step))).replace(" 00 s", "")
