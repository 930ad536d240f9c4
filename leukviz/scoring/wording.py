"""Plain words for comparisons, written once: a signed difference, a p-value, and the verdict on a paired
difference (what its interval and its test together support)."""

from __future__ import annotations

import math
from typing import Any

from leukviz.scoring import registry


def signed(x: float) -> str:
    """'+0.012' or '−0.021' (a true minus sign): a difference as verdicts and tables print it."""
    return f"{x:+.3f}".replace("-", "\u2212")


def p_text(p: float) -> str:
    """'p < 0.001', 'p = 0.004' or 'p = 0.62': a p-value as verdicts and tables print it."""
    return "p < 0.001" if p < 0.001 else "p = " + (f"{p:.3f}" if p < 0.01 else f"{p:.2f}")


CLEAR, WEAK, UNCLEAR = "clear", "weak", "unclear"


# At or above this p-value the paired test sees no sign of a difference at all: a verdict never calls it
# evidence, whatever the interval says (few subjects make the interval narrow and the test blunt).
WEAK_P = 0.5


def verdict_kind(entry: dict[str, Any], confidence: float = 0.95) -> str:
    """What a paired difference (one score's entry of paired_comparison) supports, from its interval and
    its test together: CLEAR (the interval excludes 0 and p < 1 - confidence), WEAK (the interval excludes
    0, p below WEAK_P) or UNCLEAR (the interval includes 0, or the test sees nothing). verdict() words it."""
    low, high, p = entry.get("low"), entry.get("high"), entry.get("p_value")
    if low is None or high is None or math.isnan(low) or math.isnan(high) or low <= 0 <= high:
        return UNCLEAR
    if p is not None and math.isfinite(p) and p >= WEAK_P:
        return UNCLEAR
    if p is not None and math.isfinite(p) and p >= 1 - confidence:
        return WEAK
    return CLEAR


def verdict(name_a: str, name_b: str, score_name: str, result: dict[str, Any],
            confidence: float = 0.95) -> str:
    """A paired_comparison result in plain words, e.g. "ResNet50 − GoogLeNet: +0.012 weighted F1,
    95 % CI −0.021 to +0.045 (p = 0.62): no clear difference". A model "is better" when the interval
    excludes 0 and the p-value is below 1 - confidence; when only the interval excludes 0 the words
    say the evidence is weak, and with p at or above WEAK_P that there is no clear difference. The confidence printed is the result's own (the argument is the
    fallback for a result without one). Which model is better follows the score's direction (its
    registry entry's higher_is_better)."""
    confidence = float(result.get("confidence", confidence))
    entry = result["scores"][score_name]
    spec = registry.REGISTRY.get(score_name)
    label = spec.label if spec else score_name
    head = f"{name_a} \u2212 {name_b}"
    diff, low, high, p = (entry.get(k) for k in ("difference", "low", "high", "p_value"))
    if diff is None or (isinstance(diff, float) and math.isnan(diff)):
        return f"{head}: {label} is undefined on these cells"
    text = f"{head}: {signed(diff)} {label}"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{text} (no interval): no clear difference"
    text += f", {100 * confidence:g} % CI {signed(low)} to {signed(high)}"
    if p is not None and math.isfinite(p):
        text += f" ({p_text(p)})"
    kind = verdict_kind(entry, confidence)
    if low <= 0 <= high:
        return f"{text}: no clear difference"
    better = name_a if (low > 0) == (spec is None or spec.higher_is_better) else name_b
    if kind == UNCLEAR:  # the interval excludes 0, the test sees nothing: the words follow the test
        return f"{text}: no clear difference (the interval excludes 0, but the paired test cannot tell them apart)"
    if kind == WEAK:
        return f"{text}: weak evidence that {better} is better (the interval excludes 0, the test does not)"
    return f"{text}: {better} is better"
