"""Several drivers (``mxc run --drivers N``): admission and completion tracking sharded over N driver
actors on the driver's node.

Each shard is a :class:`~.driver.Driver` in an actor of its own, with its share of
``--max-in-flight``. Every shard reads the whole input but admits only its rows: a row goes to the
shard ``crc32(its id) mod N`` (its position when it has no id), so rows that repeat an id meet in one
shard, which writes the later ones as ``duplicate_id`` as one driver does. Each shard polls the sink
for its own completions (the sink keeps one queue per shard), watches the actors and re-admits its
own lost rows. This process shows one progress bar over the shards' counters, stops every shard's
admission once ``--until-ok`` is met over all of them, and merges their results into one summary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ray

from ..data.inputs import Source
from ..semantics.engine import Engine
from .cluster import Topology, actor_info, tune_gc
from .driver import Driver, DriverConfig, DriverResult

SUMS = ("rows", "prompt_tokens", "completion_tokens", "steps", "peak_in_flight", "skipped_done",
        "duplicate_ids", "readmitted", "lost", "scans", "deaths", "input_rows")


@ray.remote(num_cpus=0, max_restarts=0)
class DriverShard:
    """One driver of a sharded run."""

    def __init__(self, ir: dict, seed: int, backend: str | None, topo: Topology, source: Source,
                 cfg: DriverConfig):
        tune_gc()
        self.driver = Driver(Engine(ir, seed=seed, backend=backend), topo, source, cfg)

    async def run(self) -> DriverResult:
        return await self.driver.run()

    async def progress(self) -> tuple[DriverResult, int]:
        """The counters so far and the rows in flight."""
        return self.driver.res, len(self.driver.inflight)

    async def halt(self) -> None:
        """Admit no more rows (the run's ``until_ok`` target is met over every shard)."""
        self.driver.halted = True

    async def ping(self) -> tuple[str, int, str]:
        """Liveness probe: (incarnation, pid, node id), as every actor of a run answers."""
        return actor_info()


def shares(total: int, n: int) -> list[int]:
    """``total`` split into ``n`` near-equal parts, each at least 1."""
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def merge(results: list[DriverResult]) -> DriverResult:
    """One result from the shards': counters summed (``peak_in_flight``: the sum of the shards' peaks,
    an upper bound), the first admission, the last completion, the first stop reason."""
    out = DriverResult()
    for r in results:
        for name in SUMS:
            setattr(out, name, getattr(out, name) + getattr(r, name))
        out.by_status.update(r.by_status)
        out.by_reason.update(r.by_reason)
        if r.first_admit is not None:
            out.first_admit = r.first_admit if out.first_admit is None else min(out.first_admit, r.first_admit)
        if r.last_done is not None:
            out.last_done = r.last_done if out.last_done is None else max(out.last_done, r.last_done)
        out.stopped = out.stopped or r.stopped
        if r.ended == "until_ok":
            out.ended = "until_ok"
    return out


@dataclasses.dataclass
class _View:
    """What the progress display reads of a driver: ``res`` and ``inflight``."""

    res: DriverResult
    inflight: range


def run_shards(engine: Engine, topo: Topology, source: Source, cfg: DriverConfig, n: int,
               placement: Any, on_progress: Callable[[Any], None] | None = None,
               handles: list | None = None) -> DriverResult:
    """Run ``n`` driver shards to completion; returns their merged result. ``handles`` receives the
    shard actors as they start (the caller kills them)."""
    handles = [] if handles is None else handles
    for i, share in enumerate(shares(cfg.max_in_flight, n)):
        c = dataclasses.replace(cfg, shard=i, shards=n, max_in_flight=share)
        handles.append(DriverShard.options(name=f"{topo.prefix}:driver:{i}", scheduling_strategy=placement)
                       .remote(engine.ir, engine.seed, engine.backend, topo, source, c))
    ray.get([h.ping.remote() for h in handles], timeout=120)
    pending = {h.run.remote(): i for i, h in enumerate(handles)}
    results: dict[int, DriverResult] = {}
    halted = False
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.25)
        for ref in ready:
            results[pending.pop(ref)] = ray.get(ref)
        view = _progress(handles, results)
        ok = cfg.ok_done + view.res.by_status.get("ok", 0)
        if cfg.until_ok is not None and ok >= cfg.until_ok and not halted:
            halted = True
            for i, h in enumerate(handles):
                if i not in results:
                    h.halt.remote()
        if on_progress is not None:
            on_progress(view)
    out = merge([results[i] for i in range(n)])
    if halted and not out.stopped:
        out.ended = "until_ok"
    return out


def _progress(handles: list, done: dict[int, DriverResult]) -> _View:
    refs = {i: h.progress.remote() for i, h in enumerate(handles) if i not in done}
    parts, inflight = list(done.values()), 0
    for ref in refs.values():
        try:
            res, k = ray.get(ref, timeout=10)
        except Exception:  # noqa: BLE001 - a shard finishing or busy: shown at the next update
            continue
        parts.append(res)
        inflight += k
    return _View(merge(parts), range(inflight))

