"""The driver: streams the input, admits rows, learns completions, and recovers rows lost with an actor.

The driver is not on the message path: it admits a row (``engine.new_message``) by sending its message
to a replica of the first role (or to the coordinator in central mode) and then only hears about the
row again when the sink reports it written. It keeps every admitted row until then, so that when an
actor dies (seen by a changed incarnation or a failed ping), or nothing has completed for a while, it
can ask every actor which rows it holds (twice, apart, to avoid races with rows moving between
actors) and re-admit the rows nobody holds and the sink has not written, from the start with
``attempt + 1``, at most ``limits.row_attempts`` times; after that the row is written with status
``error``, reason ``lost``.

Scheduling: ``row`` admits a new row the moment one finishes (at most ``max_in_flight`` in the
system); ``batch`` admits ``max_in_flight`` rows and waits for all of them before the next batch.
Rows come from an input source (inputs.py); with ``trials`` K each is admitted K times (ids ``ID#k``),
and with ``until_ok`` N admission ends once N rows with status ok are in the output (docs/data.md).
With ``--drivers N`` this driver is one of N shards (shards.py) and admits only the rows
:func:`shard_of` gives it.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
import zlib
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray

from ..actors.routing import output_line
from ..actors.sink import item_key
from ..data.inputs import InputError, Row, Source
from ..names import MAX_IN_FLIGHT, ROW_ATTEMPTS
from ..semantics.engine import Engine
from ..semantics.message import Message, id_key, position_key
from ..transport.outbox import Held, OutboxOwner, pick_two
from ..transport.protocol import TO_AGENT, TO_COORDINATOR, TO_OUTPUT
from .cluster import Handles, Topology


@dataclass(slots=True)
class DriverConfig:
    """Scheduling and recovery settings of one run."""

    max_in_flight: int = MAX_IN_FLIGHT
    schedule: str = "row"              # "row" | "batch"
    limit: int | None = None
    coalesce: bool = True
    window_s: float = 0.002
    row_attempts: int = ROW_ATTEMPTS
    ping_s: float = 0.5                # liveness pings of every actor
    idle_scan_s: float = 5.0           # no completion for this long: look for lost rows
    tail_poll_s: float = 0.1           # nothing left to admit: poll the sink at most this often
    done_ids: set = field(default_factory=set)   # already in the output (--resume)
    trials: int = 1                    # runs of each input row (ids ID#k)
    until_ok: int | None = None        # stop admitting once this many ok rows are in the output
    ok_done: int = 0                   # ok rows already in the output (--resume)
    shard: int = 0                     # this driver's index among `shards` (mxc run --drivers)
    shards: int = 1


@dataclass(slots=True)
class DriverResult:
    """What the driver saw: counts by status/reason, tokens, timing, recovery."""

    rows: int = 0
    by_status: Counter = field(default_factory=Counter)
    by_reason: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    first_admit: float | None = None
    last_done: float | None = None
    peak_in_flight: int = 0
    skipped_done: int = 0
    duplicate_ids: int = 0
    readmitted: int = 0
    lost: int = 0
    scans: int = 0
    deaths: int = 0
    input_rows: int = 0
    stopped: str | None = None     # why the run stopped before every row was written (a full disk)
    ended: str = "input"           # "input": every input row was admitted; "until_ok": the target was met


def shard_of(engine: Engine, raw: Any, position: int, shards: int) -> int:
    """The driver shard that admits a row: by its own id (so rows repeating an id meet in one shard,
    which writes the later ones as ``duplicate_id``), by its position when it has none."""
    own = engine.own_id(raw)
    base = position_key(position) if own is None else id_key(own)
    return zlib.crc32(repr(base).encode("utf-8", "backslashreplace")) % shards


def owned_rows(engine: Engine, rows: Iterator[Row], shard: int, shards: int) -> Iterator[Row]:
    """The rows of ``rows`` that driver ``shard`` of ``shards`` admits."""
    for pos, raw in rows:
        if shard_of(engine, raw, pos, shards) == shard:
            yield pos, raw


def trial_rows(rows: Iterator[Row], trials: int) -> Iterator[tuple[int, Any, int | None]]:
    """``(position, raw, trial)``: each row once with trial None when ``trials`` is 1, else ``trials``
    times with trials 0 .. trials-1."""
    if trials == 1:
        for pos, raw in rows:
            yield pos, raw, None
        return
    for pos, raw in rows:
        for k in range(trials):
            yield pos, raw, k


class Driver(OutboxOwner):
    """Admission, completion tracking and lost-row recovery for one run (an asyncio object)."""

    def __init__(self, engine: Engine, topo: Topology, source: str | Source, cfg: DriverConfig,
                 on_progress: Callable[[Driver], None] | None = None):
        self.engine, self.topo, self.cfg = engine, topo, cfg
        self.handles = Handles(topo)
        if isinstance(source, str):
            source = Source(source, "jsonl", [source])
        rows = source.rows(cfg.limit)
        if cfg.shards > 1:
            rows = owned_rows(engine, rows, cfg.shard, cfg.shards)
        self.rows = trial_rows(rows, cfg.trials)
        self.on_progress = on_progress
        self.inflight: dict[Hashable, Message] = {}
        self.seen: dict[Hashable, int] = {}      # row key -> input position of its first row
        self.held = Held()
        self.exhausted = False
        self.halted = False                      # told to admit no more rows (a sharded until_ok)
        self.res = DriverResult()
        self.last_progress = time.monotonic()
        self.incarnations: dict[str, str] = {}
        self.rng = random.Random(0)

    # -- main loop ---------------------------------------------------------------------------------
    async def run(self) -> DriverResult:
        """Run every input row to its output line; returns the counters."""
        self.incarnations = await self._ping_all()
        watch = asyncio.ensure_future(self._watch())
        sink = self.handles.get(self.topo.sink)
        try:
            self._admit()
            while not (self.exhausted and not self.inflight):
                try:
                    done, failure = await sink.poll.remote(0.25, self.cfg.shard)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                    await asyncio.sleep(0.2)     # the sink is restarting: it re-reads the output
                    continue
                if failure is not None:          # the output cannot be written: stop, --resume finishes
                    for key, info in done:
                        self._complete(key, info)
                    self.res.stopped = failure
                    break
                for key, info in done:
                    self._complete(key, info)
                if done:
                    self.last_progress = time.monotonic()
                self._admit()
                if self.on_progress is not None:
                    self.on_progress(self)
                if done and self.exhausted and self.inflight:
                    # nothing left to admit: completions only count rows now, so take them in
                    # batches (a poll is a Ray call here and at the sink, one per row when rows
                    # end one at a time)
                    await asyncio.sleep(self.cfg.tail_poll_s)
            await self.outbox.drain()
        finally:
            watch.cancel()
        return self.res

    def _admit(self) -> None:
        cap = self.cfg.max_in_flight
        if self.cfg.schedule == "batch":
            if self.inflight:
                return
            budget = cap
        else:
            budget = cap - len(self.inflight)
        while budget > 0 and not self.exhausted:
            if self.halted or self.target_met():
                self.exhausted, self.res.ended = True, "until_ok"
                break
            try:
                nxt = next(self.rows, None)
            except InputError as e:              # a shard broke mid-read: finish what is in flight, stop
                self.exhausted, self.res.stopped = True, str(e)
                break
            if nxt is None:
                self.exhausted = True
                break
            if self._admit_line(*nxt):
                budget -= 1

    def ok_rows(self) -> int:
        """Rows with status ok in the output: written by earlier runs (--resume) and by this one."""
        return self.cfg.ok_done + self.res.by_status.get("ok", 0)

    def target_met(self) -> bool:
        """Whether ``until_ok`` ok rows are in the output."""
        return self.cfg.until_ok is not None and self.ok_rows() >= self.cfg.until_ok

    def _admit_line(self, pos: int, line: Any, trial: int | None = None) -> bool:
        now = time.time()
        if not trial:
            self.res.input_rows += 1
        msg = self.engine.new_message(line, pos, now, trial=trial)
        msg.driver = self.cfg.shard
        key = msg.key
        first = self.seen.get(key)
        if first is None:
            self.seen[key] = pos
        else:                                # its id repeats an earlier row's: written as failed
            self.engine.duplicate(msg, first, now)
            key = msg.key
            self.res.duplicate_ids += 1
        if key in self.cfg.done_ids:
            self.res.skipped_done += 1
            return False
        if self.res.first_admit is None:
            self.res.first_admit = now
        self.inflight[key] = msg
        self.res.peak_in_flight = max(self.res.peak_in_flight, len(self.inflight))
        self._send(msg)
        return True

    def _send(self, msg: Message, *, hold: bool = True) -> None:
        """Send a new (or re-admitted) message: finished ones straight to the sink. The driver holds
        the row until the receiver acknowledges it (one hold per send; a resend keeps the failed
        send's hold instead of taking another)."""
        key = msg.key
        if hold:
            self.held[key] += 1
        if msg.finished:
            self.outbox.send((TO_OUTPUT,), self.handles.get(self.topo.sink), output_line(self.engine, msg, []))
        elif self.topo.central:
            self.outbox.send((TO_COORDINATOR,), self.handles.get(self.topo.coordinator), msg)
        else:
            names = self.topo.agents(msg.state)
            name = pick_two(names, lambda n: self.outbox.load((TO_AGENT, n)), self.rng)
            self.outbox.send((TO_AGENT, name), self.handles.get(name), msg)

    def _complete(self, key: Hashable, info: dict) -> None:
        if self.inflight.pop(key, None) is None:
            return
        r = self.res
        r.rows += 1
        r.by_status[info["status"]] += 1
        if info.get("reason"):
            r.by_reason[f"{info['status']}/{info['reason']}"] += 1
        r.prompt_tokens += info.get("prompt_tokens", 0)
        r.completion_tokens += info.get("completion_tokens", 0)
        r.steps += info.get("steps", 0)
        fin = info.get("finished") or time.time()
        r.last_done = fin if r.last_done is None else max(r.last_done, fin)

    # -- transport callbacks -------------------------------------------------------------------------
    def _on_ack(self, dest: tuple, batch: list, load) -> None:
        for item in batch:
            self.held.release(item_key(item))

    def _on_error(self, dest: tuple, batch: list, exc: BaseException) -> None:
        """A send failed (the receiver died): resend each row still in flight under the hold the
        failed send took; release the hold of a row that completed meanwhile."""
        def resend() -> None:
            for item in batch:
                key = item_key(item)
                if key in self.inflight:
                    self._send(self.inflight[key], hold=False)
                else:
                    self.held.release(key)

        asyncio.get_running_loop().call_later(0.2, resend)

    # -- liveness and recovery -----------------------------------------------------------------------
    def _actor_names(self) -> list[str]:
        t = self.topo
        names = t.all_agents() + t.all_sims() + [t.sink]
        if t.central:
            names.append(t.coordinator)
        return names

    async def _ping_all(self, timeout: float = 5.0) -> dict[str, str]:
        names = self._actor_names()

        async def one(name: str) -> str:
            try:
                inc, _, _ = await asyncio.wait_for(self.handles.get(name).ping.remote(), timeout)
                return inc
            except Exception:  # noqa: BLE001 - dead, restarting or unreachable
                return "?"

        return dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.ping_s)
            now = await self._ping_all()
            changed = [n for n, inc in now.items() if inc != self.incarnations.get(n)]
            restarted = [n for n in changed if now[n] != "?"]     # a new incarnation answered
            if restarted:
                self.res.deaths += len(restarted)
                self.incarnations.update({n: now[n] for n in restarted})
                await self._notify_restarts(restarted)
            idle = time.monotonic() - self.last_progress > self.cfg.idle_scan_s
            if self.inflight and (changed or idle):
                await self._scan()
                if idle:
                    self.last_progress = time.monotonic()

    async def _notify_restarts(self, names: list[str]) -> None:
        """Tell agents that a sim service restarted, so they re-send the requests it lost."""
        sims = [n for n in names if ":sim:" in n]
        if not sims:
            return
        for agent in self.topo.all_agents():
            self.handles.get(agent).sim_restarted.remote(sims)

    async def _candidates(self) -> set[Hashable] | None:
        names = self.topo.all_agents() + ([self.topo.coordinator] if self.topo.central else [])
        try:
            lists = await asyncio.wait_for(
                asyncio.gather(*(self.handles.get(n).held_ids.remote() for n in names)), 10.0)
        except Exception:  # noqa: BLE001 - an actor is still restarting: try again later
            return None
        held = set(self.held)
        for ids in lists:
            held.update(ids)
        return {k for k in self.inflight if k not in held}

    async def _scan(self) -> None:
        """Re-admit rows that no live actor holds and the sink has not written.

        Rows the sink has written but never reported (it restarted before the driver polled their
        completions) are completed from the output file instead.
        """
        self.res.scans += 1
        first = await self._candidates()
        if not first:
            return
        await asyncio.sleep(0.3)
        second = await self._candidates()
        if not second:
            return
        both = [k for k in first & second if k in self.inflight]
        sink = self.handles.get(self.topo.sink)
        try:
            written = set(await sink.written.remote(both))
            infos = await sink.infos.remote(list(written)) if written else []
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            return                               # the sink is restarting: scan again later
        for key, info in infos:
            self._complete(key, info)
        for key in both:
            if key in self.inflight and key not in written:
                self._readmit(key)

    def _readmit(self, key: Hashable) -> None:
        old = self.inflight[key]
        msg = copy.deepcopy(old)
        msg.attempt = old.attempt + 1
        if msg.attempt > self.cfg.row_attempts:
            self.engine.fail(msg, "error", "lost",
                             f"row lost {msg.attempt} times (an actor holding it died); "
                             f"limits.row_attempts = {self.cfg.row_attempts}", time.time())
            msg.attempt = old.attempt
            self.res.lost += 1
        else:
            self.res.readmitted += 1
        self.inflight[key] = msg
        self._send(msg)

