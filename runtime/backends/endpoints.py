"""The endpoints of one model: routing (sticky by row, else least outstanding requests) and a circuit breaker.

Routing: a call with a key (the row id) goes to the key's *home* endpoint, chosen by rendezvous hashing
(highest ``crc32(key, url)``), so every step of a row reaches the same server and reuses its prefix cache,
from any process, whatever the order of the URL list. When the home is unhealthy (its breaker is open) or
the caller asks to avoid it (it just failed this call), the call goes to the healthy endpoint with the
fewest outstanding requests. A call without a key always takes the least loaded healthy endpoint.

Circuit breaker, per endpoint: ``failure_threshold`` consecutive failures (connection errors, timeouts,
5xx) open it for ``cooldown_s``; after that one trial request is let through (half-open): success closes
the breaker, failure reopens it for twice as long (at most ``max_cooldown_s``). When every endpoint is
open the one that reopens soonest is used, so calls are slowed by the caller's backoff, not refused.
Not thread-safe: use from one event loop.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Collection, Hashable, Sequence
from urllib.parse import urlsplit, urlunsplit


def display_url(url: str) -> str:
    """The URL without credentials (``user:password@``), for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class Endpoint:
    """One server URL of a model, with its load and breaker state."""

    __slots__ = ("url", "index", "shown", "_salt", "outstanding", "failures", "open_until", "cooldown",
                 "probing", "requests", "errors", "opens")

    def __init__(self, url: str, index: int) -> None:
        self.url, self.index, self.shown = url, index, display_url(url)
        self._salt = url.encode()
        self.outstanding = 0        # requests in flight
        self.failures = 0           # consecutive failures
        self.open_until = 0.0       # breaker open until this monotonic time (0: closed)
        self.cooldown = 0.0         # the current open period
        self.probing = False        # half-open: the trial request is in flight
        self.requests = 0
        self.errors = 0
        self.opens = 0              # times the breaker opened

    def state(self, now: float) -> str:
        """"closed", "open" or "half_open"."""
        if self.open_until == 0.0:
            return "closed"
        return "open" if now < self.open_until or self.probing else "half_open"

    def score(self, key: bytes) -> int:
        return zlib.crc32(self._salt, zlib.crc32(key))


class EndpointPool:
    """Endpoints of one model; see the module docstring for the routing and breaker rules."""

    def __init__(self, urls: Sequence[str], *, failure_threshold: int = 3, cooldown_s: float = 2.0,
                 max_cooldown_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ValueError("an endpoint pool needs at least one URL")
        if failure_threshold < 1 or cooldown_s < 0 or max_cooldown_s < cooldown_s:
            raise ValueError("need failure_threshold >= 1 and 0 <= cooldown_s <= max_cooldown_s")
        self.endpoints = [Endpoint(u, i) for i, u in enumerate(urls)]
        self.failure_threshold, self.cooldown_s, self.max_cooldown_s = failure_threshold, cooldown_s, max_cooldown_s
        self.clock = clock
        self._rr = 0

    def __len__(self) -> int:
        return len(self.endpoints)

    def home(self, key: Hashable) -> Endpoint:
        """The endpoint a key sticks to while it is healthy (rendezvous hashing)."""
        k = str(key).encode()
        return max(self.endpoints, key=lambda e: e.score(k))

    def pick(self, key: Hashable | None = None, avoid: Collection[Endpoint] = ()) -> Endpoint:
        """The endpoint for the next request (does not count it: call ``begin``)."""
        eps = self.endpoints
        if len(eps) == 1:
            return eps[0]
        now = self.clock()
        if key is not None:
            home = self.home(key)
            if home not in avoid and self._usable(home, now):
                return home
        best: Endpoint | None = None
        n = len(eps)
        start = self._rr
        self._rr = (start + 1) % n
        for j in range(n):
            e = eps[(start + j) % n]
            if e in avoid or not self._usable(e, now):
                continue
            if best is None or e.outstanding < best.outstanding:
                best = e
        if best is not None:
            return best
        # nothing healthy (or everything avoided): the breaker that reopens soonest, avoided ones last
        return min(eps, key=lambda e: (e in avoid, e.open_until))

    def begin(self, e: Endpoint) -> None:
        """A request to ``e`` starts (a half-open endpoint's request is its trial)."""
        e.outstanding += 1
        e.requests += 1
        if e.open_until and self.clock() >= e.open_until:
            e.probing = True

    def end(self, e: Endpoint, ok: bool | None) -> None:
        """A request to ``e`` ended: ok True (success), False (counts against the breaker) or None (neutral,
        e.g. a 429: the server is alive but busy)."""
        e.outstanding -= 1
        if ok is None:
            if e.probing:
                e.probing = False          # a busy server is alive: let another trial through
            return
        if ok:
            e.failures, e.open_until, e.cooldown, e.probing = 0, 0.0, 0.0, False
            return
        e.errors += 1
        e.failures += 1
        if e.probing or (e.open_until == 0.0 and e.failures >= self.failure_threshold):
            e.cooldown = min(self.max_cooldown_s, e.cooldown * 2 if e.cooldown else self.cooldown_s)
            e.open_until = self.clock() + e.cooldown
            e.probing = False
            e.opens += 1

    def healthy(self) -> list[Endpoint]:
        now = self.clock()
        return [e for e in self.endpoints if self._usable(e, now)]

    def snapshot(self) -> list[dict]:
        """Per endpoint: URL (without credentials), breaker state, load and counters."""
        now = self.clock()
        return [{"url": e.shown, "state": e.state(now), "outstanding": e.outstanding, "requests": e.requests,
                 "errors": e.errors, "opens": e.opens, "failures": e.failures} for e in self.endpoints]

    @staticmethod
    def _usable(e: Endpoint, now: float) -> bool:
        return e.open_until == 0.0 or (now >= e.open_until and not e.probing)
