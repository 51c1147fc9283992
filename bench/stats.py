"""Median and spread of repeated measurements."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable


def spread(values: Iterable[float | None]) -> dict:
    """``{median, min, max, n, values}`` of the finite values (median None when there are none)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs),
            "values": [round(x, 6) for x in xs]}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_spread(s: dict, digits: int = 2, unit: str = "") -> str:
    """``1.23 (1.10-1.40, n=3)``."""
    if s.get("median") is None:
        return "-"
    f = f"{{:.{digits}f}}"
    if s["n"] == 1:
        return f.format(s["median"]) + unit
    return f"{f.format(s['median'])}{unit} ({f.format(s['min'])}-{f.format(s['max'])}, n={s['n']})"
