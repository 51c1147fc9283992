"""Waiting for a condition in tests: a bound for slow machines, never a timing assertion."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(pred: Callable[[], bool], limit_s: float = 120.0, interval_s: float = 0.05) -> bool:
    """Poll `pred` until it holds (True) or `limit_s` passed (False)."""
    deadline = time.monotonic() + limit_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True
