"""One-way, coalesced sends between Ray actors.

Every actor of the runtime exposes ``deliver(batch) -> load``: it only enqueues the items and returns
at once (the ack), reporting its current load. A sender keeps one :class:`Outbox`; per destination it

* sends a message **at once** (same event-loop tick; items sent in one tick travel together) while
  fewer than ``max_inflight`` (2) calls are in flight to that destination, so a lone row never waits
  on others, not even on the ack of the previous call;
* while those calls are in flight, lets messages accumulate and sends them **together** when a call
  returns, or after a short adaptive window (the smoothed round trip, at most ``window_s``, 2 ms by
  default), whichever comes first (at most ``4 × max_inflight`` calls in flight).

Batches travel as one C-pickle blob (:func:`pack`; receivers call :func:`unpack`). Items stay "held" by the sender until the receiver has acknowledged them (``on_ack``), so a message
is always held by at least one live actor: this is what the driver's lost-row scan relies on.
"""

from __future__ import annotations

import asyncio
import pickle
import random
from collections import Counter
from collections.abc import Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .protocol import DELIVER

AckFn = Callable[[Hashable, list, Any], None]
ErrorFn = Callable[[Hashable, list, BaseException], None]


class Held(Counter):
    """Row keys an actor holds (received, or sent and not yet acknowledged), with a count of copies."""

    def release(self, key: Hashable) -> bool:
        """Let go of one copy; True when no copy of ``key`` is held any more."""
        n = self[key] - 1
        if n > 0:
            self[key] = n
            return False
        self.pop(key, None)
        return True


@dataclass(slots=True)
class _Lane:
    """State of one destination: queued items, calls in flight, reported load."""

    handle: Any
    method: str
    queue: list = field(default_factory=list)
    inflight: int = 0          # calls in flight
    inflight_items: int = 0    # items inside those calls
    load: int = 0              # receiver load reported by the last ack
    scheduled: bool = False    # a flush is already scheduled
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class OutboxStats:
    """Counters of what an outbox sent: calls, items and a batch-size histogram (powers of two)."""

    calls: int = 0
    items: int = 0
    errors: int = 0
    max_batch: int = 0
    hist: dict[int, int] = field(default_factory=dict)

    def record(self, n: int) -> None:
        self.calls += 1
        self.items += n
        self.max_batch = max(self.max_batch, n)
        bucket = 1 << (n - 1).bit_length()
        self.hist[bucket] = self.hist.get(bucket, 0) + 1

    def as_dict(self) -> dict:
        return {"calls": self.calls, "items": self.items, "errors": self.errors,
                "max_batch": self.max_batch, "hist": dict(sorted(self.hist.items()))}


class Outbox:
    """Per-destination coalescing one-way sender (asyncio; one per actor or driver process)."""

    def __init__(self, *, coalesce: bool = True, window_s: float = 0.002, max_batch: int = 2048,
                 max_inflight: int = 2, on_ack: AckFn | None = None, on_error: ErrorFn | None = None,
                 packed: bool = True):
        self.coalesce = coalesce
        self.packed = packed
        self.window_s = window_s
        self.max_batch = max_batch if coalesce else 1
        self.max_inflight = max_inflight if coalesce else 1 << 30
        self.on_ack = on_ack
        self.on_error = on_error
        self.stats = OutboxStats()
        self._lanes: dict[Hashable, _Lane] = {}
        self._rtt = window_s / 2          # smoothed round trip of a deliver call
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0                    # items queued or in flight, all lanes
        self._tasks: set[asyncio.Task] = set()

    # -- sending -----------------------------------------------------------------------------------
    def send(self, dest: Hashable, handle: Any, item: Any, method: str = DELIVER) -> None:
        """Queue ``item`` for ``handle.<method>``; never blocks, never waits for the receiver."""
        lane = self._lanes.get(dest)
        if lane is None:
            lane = self._lanes[dest] = _Lane(handle, method)
        lane.queue.append(item)
        self._busy += 1
        self._idle.clear()
        if not self.coalesce:
            self._flush(dest, lane)
        elif lane.inflight < self.max_inflight:
            if not lane.scheduled:   # same tick: items sent in this tick travel together
                lane.scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_scheduled, dest, lane)
        else:
            self._arm(dest, lane)

    def _arm(self, dest: Hashable, lane: _Lane) -> None:
        """Bound the wait of queued items while the lane's calls are all in flight."""
        if lane.timer is None:
            delay = min(self.window_s, self._rtt)
            lane.timer = asyncio.get_running_loop().call_later(delay, self._window_elapsed, dest, lane)

    def _flush_scheduled(self, dest: Hashable, lane: _Lane) -> None:
        lane.scheduled = False
        if lane.inflight < self.max_inflight:
            self._flush(dest, lane)
        elif lane.queue:
            self._arm(dest, lane)

    def _window_elapsed(self, dest: Hashable, lane: _Lane) -> None:
        """The window is over and the calls are still out: send anyway (up to a hard cap of calls)."""
        lane.timer = None
        if lane.queue and lane.inflight < 4 * self.max_inflight:
            self._send_batch(dest, lane)
        if lane.queue:
            self._arm(dest, lane)

    def _flush(self, dest: Hashable, lane: _Lane) -> None:
        """Send what is queued: one batch (coalescing), or every item on its own (not coalescing)."""
        while lane.queue and lane.inflight < self.max_inflight:
            self._send_batch(dest, lane)
            if self.coalesce:
                break
        if lane.timer is not None and not lane.queue:
            lane.timer.cancel()
            lane.timer = None

    def _send_batch(self, dest: Hashable, lane: _Lane) -> None:
        batch = lane.queue[: self.max_batch]
        del lane.queue[: self.max_batch]
        lane.inflight += 1
        lane.inflight_items += len(batch)
        self.stats.record(len(batch))
        ref = getattr(lane.handle, lane.method).remote(pack(batch) if self.packed else batch)
        spawn(self._await_ack(dest, lane, batch, ref), self._tasks)

    async def _await_ack(self, dest: Hashable, lane: _Lane, batch: list, ref: Any) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            load = await ref
        except BaseException as exc:  # noqa: BLE001 - actor death, cancellation: hand to the owner
            self.stats.errors += 1
            self._done(lane, batch)
            if self.on_error is not None:
                self.on_error(dest, batch, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            self._rtt = 0.8 * self._rtt + 0.2 * (loop.time() - t0)
            lane.load = load if isinstance(load, int) else 0
            self._done(lane, batch)
            if self.on_ack is not None:
                self.on_ack(dest, batch, load)
        if lane.queue and lane.inflight < self.max_inflight:
            self._flush(dest, lane)

    def _done(self, lane: _Lane, batch: list) -> None:
        lane.inflight -= 1
        lane.inflight_items -= len(batch)
        self._busy -= len(batch)
        if self._busy == 0:
            self._idle.set()

    # -- load and introspection --------------------------------------------------------------------
    def outstanding(self, dest: Hashable) -> int:
        """Items this sender has queued or in flight to ``dest``."""
        lane = self._lanes.get(dest)
        return 0 if lane is None else len(lane.queue) + lane.inflight_items

    def load(self, dest: Hashable) -> int:
        """Load of ``dest`` as last reported in its ack, plus what is still on its way to it."""
        lane = self._lanes.get(dest)
        return 0 if lane is None else lane.load + len(lane.queue) + lane.inflight_items

    def pending_items(self) -> list:
        """Items queued but not yet sent (in flight items are held by the caller until acked)."""
        return [it for lane in self._lanes.values() for it in lane.queue]

    def forget(self, dest: Hashable) -> list:
        """Drop a destination (e.g. a dead actor); returns its queued, unsent items."""
        lane = self._lanes.pop(dest, None)
        if lane is None:
            return []
        if lane.timer is not None:
            lane.timer.cancel()
        items, lane.queue = lane.queue, []
        self._busy -= len(items)
        if self._busy == 0:
            self._idle.set()
        return items

    async def drain(self) -> None:
        """Wait until every queued item has been acknowledged (or failed)."""
        await self._idle.wait()


class OutboxOwner:
    """An actor or driver that sends through one :class:`Outbox` with its own ``_on_ack`` and
    ``_on_error``. The outbox is made on first use, inside the owner's event loop (its asyncio
    objects belong to that loop), with the owner's :meth:`_outbox_settings`."""

    _outbox: Outbox | None = None

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            coalesce, window_s = self._outbox_settings()
            self._outbox = Outbox(coalesce=coalesce, window_s=window_s,
                                  on_ack=self._on_ack, on_error=self._on_error)
        return self._outbox

    def _outbox_settings(self) -> tuple[bool, float]:
        """(coalesce, window_s) of the outbox: by default those of the owner's ``cfg``."""
        return self.cfg.coalesce, self.cfg.window_s  # type: ignore[attr-defined]

    def outbox_stats(self) -> dict | None:
        """The outbox's counters (None when nothing was sent yet)."""
        return self._outbox.stats.as_dict() if self._outbox is not None else None

    def _on_ack(self, dest: Hashable, batch: list, load: Any) -> None:
        raise NotImplementedError

    def _on_error(self, dest: Hashable, batch: list, exc: BaseException) -> None:
        raise NotImplementedError


def pack(batch: list) -> bytes:
    """A batch as one C-pickle blob. Ray serializes call arguments with cloudpickle, whose per-object
    hooks cost ~3x the C pickler on messages; a blob of bytes it passes through as is."""
    return pickle.dumps(batch, protocol=5)


def unpack(batch: list | bytes) -> list:
    """The items of a delivered batch (packed by :func:`pack`, or a plain list)."""
    return pickle.loads(batch) if isinstance(batch, bytes) else batch


def spawn(coro: Coroutine[Any, Any, Any], tasks: set[asyncio.Task]) -> asyncio.Task:
    """Start ``coro`` as a task kept in ``tasks`` until it ends (the event loop holds tasks weakly)."""
    task = asyncio.ensure_future(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


def pick_two(keys: Sequence[Hashable], load: Callable[[Hashable], int], rng: random.Random) -> Hashable:
    """Power of two choices: the less loaded of two random destinations (ties: the first drawn)."""
    n = len(keys)
    if n == 1:
        return keys[0]
    a = int(rng.random() * n)
    b = int(rng.random() * (n - 1))
    b += b >= a                     # two distinct indices
    return keys[a] if load(keys[a]) <= load(keys[b]) else keys[b]
