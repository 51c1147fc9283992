"""Adaptive concurrency of one endpoint: AIMD (additive increase, multiplicative decrease).

``AdaptiveLimit`` caps the calls in flight to one endpoint of one client. A call ``await acquire()``s
a slot before it is sent (a call waiting here is not in flight at the server), and ``release()``s it
when its answer is in; in between it reports ``on_success(latency, sent)`` or ``on_overload(sent,
retry_after)`` (a 429, a 503, a timeout), ``sent`` being what ``acquire`` returned.

- Decrease: an overload signal, or a short-term latency average above ``latency_factor`` times the
  long-term one, sets ``limit = max(min_limit, floor(min(limit, in_flight) * decrease))``, at most
  once per window: a signal from a call sent before the last decrease is ignored (those calls were
  already in flight when it was decided, like TCP's one cut per round trip).
- Increase: every ``max(limit, increase_after)`` successes add one, up to ``max_limit``, when the limit
  was reached since the last change (a limit nobody uses does not grow). ``increase_after`` keeps a
  small limit from doubling on every success (one 429 per success or two at limits of 1-3).
- ``Retry-After``: the endpoint sends no new call until it has elapsed (``paused_until``); waiting calls
  go in FIFO order once it has.

Defaults live in ``names.AIMD_DEFAULTS``. Not thread-safe: use from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable

from ..names import AIMD_DEFAULTS


class AdaptiveLimit:
    """Calls in flight to one endpoint, under a limit that adapts (see the module docstring)."""

    def __init__(self, max_limit: int, *, min_limit: int = AIMD_DEFAULTS["min_limit"],
                 decrease: float = AIMD_DEFAULTS["decrease"], latency_factor: float = AIMD_DEFAULTS["latency_factor"],
                 latency_samples: int = AIMD_DEFAULTS["latency_samples"],
                 increase_after: int = AIMD_DEFAULTS["increase_after"], clock: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit} and {max_limit}")
        if not 0.0 < decrease < 1.0 or latency_factor <= 1.0:
            raise ValueError("need 0 < decrease < 1 and latency_factor > 1")
        self.min_limit, self.max_limit = min_limit, max_limit
        self.decrease, self.latency_factor, self.latency_samples = decrease, latency_factor, latency_samples
        self.increase_after = max(1, increase_after)
        self.clock = clock
        self.limit = max_limit          # starts open: the caller's own concurrency is the first cap
        self.in_flight = 0
        self.paused_until = 0.0
        self._waiters: deque[asyncio.Future] = deque()
        self._timer: asyncio.Handle | None = None
        self._cut_at = -math.inf        # when the limit was last decreased
        self._successes = 0             # since the last change
        self._peak = 0                  # most in flight since the last change
        self._short: float | None = None
        self._long = 0.0
        self._samples = 0
        self.decreases = self.latency_decreases = self.increases = self.pauses = self.waited = 0
        self.paused_s = 0.0

    # -- slots ----------------------------------------------------------------------------------------
    def free(self) -> bool:
        """Whether a call could start now (not paused, under the limit, nobody queued first)."""
        return not self._waiters and self._open()

    async def acquire(self) -> float:
        """Wait for a slot; returns the time the call is sent (for ``on_success``/``on_overload``)."""
        if self.free():
            self._take()
            return self.clock()
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.waited += 1
        self._arm()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():   # granted, then cancelled: give the slot back
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise
        return self.clock()

    def release(self) -> None:
        """A call's answer is in (or it was cancelled): its slot is free."""
        self.in_flight -= 1
        self._dispatch()

    # -- signals --------------------------------------------------------------------------------------
    def on_success(self, latency: float, sent: float) -> None:
        """A call sent at ``sent`` succeeded after ``latency`` seconds."""
        if self._short is None:
            self._short = self._long = latency
        else:
            self._short += 0.1 * (latency - self._short)
            self._long += 0.01 * (latency - self._long)
        self._samples += 1
        if (self._samples >= self.latency_samples and self._short > self.latency_factor * self._long
                and sent > self._cut_at):
            self.latency_decreases += 1
            self._short = self._long                 # measure afresh after the cut
            self._cut(self.clock())
            return
        self._successes += 1
        if self._successes >= max(self.limit, self.increase_after):
            self._successes = 0
            if self._peak >= self.limit and self.limit < self.max_limit:
                self.limit += 1
                self.increases += 1
                self._dispatch()
            self._peak = self.in_flight

    def on_overload(self, sent: float, retry_after: float | None = None) -> None:
        """A call sent at ``sent`` was refused (429/503) or timed out; ``retry_after``: the server's wish."""
        now = self.clock()
        if retry_after is not None and retry_after > 0 and now + retry_after > self.paused_until:
            self.paused_s += now + retry_after - max(now, self.paused_until)
            self.paused_until = now + retry_after
            self.pauses += 1
        if sent > self._cut_at:
            self._cut(now)
        self._arm()

    def snapshot(self) -> dict:
        """The limit and its counters."""
        return {"limit": self.limit, "in_flight": self.in_flight, "waiting": len(self._waiters),
                "decreases": self.decreases, "latency_decreases": self.latency_decreases,
                "increases": self.increases, "pauses": self.pauses, "paused_s": round(self.paused_s, 3),
                "waited": self.waited}

    # -- internals ------------------------------------------------------------------------------------
    def _open(self) -> bool:
        return self.in_flight < self.limit and self.clock() >= self.paused_until

    def _take(self) -> None:
        self.in_flight += 1
        self._peak = max(self._peak, self.in_flight)

    def _cut(self, now: float) -> None:
        base = min(self.limit, max(self.in_flight, 1))
        self.limit = max(self.min_limit, math.floor(base * self.decrease))
        self.decreases += 1
        self._cut_at = now
        self._successes = 0
        self._peak = self.in_flight

    def _dispatch(self) -> None:
        """Grant slots to waiting calls, in order, while the limit and any pause allow."""
        while self._waiters and self._open():
            fut = self._waiters.popleft()
            if fut.done():                            # cancelled while waiting
                continue
            self._take()
            fut.set_result(None)
        self._arm()

    def _arm(self) -> None:
        """While calls wait out a pause, a timer wakes them when it ends."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._waiters:
            return
        delay = self.paused_until - self.clock()
        if delay > 0:
            self._timer = asyncio.get_running_loop().call_later(delay, self._wake)
        elif self.in_flight < self.limit:     # the pause is over, its timer not yet run: wake them now
            self._timer = asyncio.get_running_loop().call_soon(self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._dispatch()
