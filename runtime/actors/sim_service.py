"""The in-cluster simulated LLM service: a Ray actor modelling GPU inference servers.

One :class:`SimService` actor models a share of the replicas of one or more models (per model:
``replicas`` × ``max_concurrency`` sequences decoding at once, FIFO queueing when full,
continuous-batching slowdown; see ``simmodel.SimCapacity``). Requests and replies travel one-way and coalesced: an agent delivers a
batch of requests to :meth:`SimService.submit` (returns at once with the service's load), and the
service delivers each reply to the requesting agent's ``replies`` method when its simulated decode
finishes. A reply's text is the call's rendered ``sim`` template, or deterministic filler text of the
drawn length; usage is the call's prompt estimate and the drawn completion length.

A request is ``(reply_to, req_id, model, sim_text, sim_tokens, prompt_tokens, seed_key)``; a reply is
``(req_id, text, prompt_tokens, completion_tokens)``.
"""

from __future__ import annotations

import asyncio
import os

import ray

from ..backends.simmodel import SimCapacity, sim_reply
from ..control.cluster import Handles, Topology, actor_info, tune_gc
from ..transport.outbox import Outbox, unpack
from ..transport.protocol import REPLIES


@ray.remote(num_cpus=0, max_restarts=-1)
class SimService:
    """Simulated GPU servers: for each hosted model, a share of its ``sim.replicas``."""

    def __init__(self, models: dict[str, tuple[dict, int]], topo: Topology, coalesce: bool = True):
        """``models``: model name → (its IR ``sim`` block, replicas hosted here)."""
        tune_gc()
        self.caps = {m: SimCapacity(n, sim["max_concurrency"], sim["ttft_s"], sim["per_token_s"])
                     for m, (sim, n) in models.items()}
        self._handles = Handles(topo)
        self._coalesce = coalesce
        self._outbox: Outbox | None = None
        self._next = 0
        self._queued: dict[int, tuple] = {}
        self.served: dict[str, int] = dict.fromkeys(models, 0)
        self.tokens: dict[str, int] = dict.fromkeys(models, 0)
        self.busy_s: dict[str, float] = dict.fromkeys(models, 0.0)   # sequence-seconds decoded
        self.peak_active: dict[str, int] = dict.fromkeys(models, 0)
        self.peak_queued: dict[str, int] = dict.fromkeys(models, 0)
        self._load = 0

    async def submit(self, batch: bytes | list[tuple]) -> int:
        """Accept requests (one-way); returns the load: sequences decoding plus queued."""
        batch = unpack(batch)
        if self._outbox is None:
            self._outbox = Outbox(coalesce=self._coalesce)
        for req in batch:
            model = req[2]
            cap = self.caps[model]
            ticket = self._next
            self._next += 1
            self._load += 1
            replica = cap.acquire(ticket)
            if replica is None:
                self._queued[ticket] = req
                self.peak_queued[model] = max(self.peak_queued[model], cap.queued)
            else:
                self._start(req, replica)
        return self._load

    def _start(self, req: tuple, replica: int) -> None:
        model = req[2]
        cap = self.caps[model]
        self.peak_active[model] = max(self.peak_active[model], cap.in_flight)
        duration = cap.duration(req[4], cap.active(replica))
        self.busy_s[model] += duration
        loop = asyncio.get_running_loop()
        if duration <= 0:
            loop.call_soon(self._finish, req, replica)
        else:
            loop.call_later(duration, self._finish, req, replica)

    def _finish(self, req: tuple, replica: int) -> None:
        reply_to, req_id, model, sim_text, tokens, prompt_tokens, seed_key = req
        text = sim_reply(sim_text, tokens, seed_key)
        self.served[model] += 1
        self.tokens[model] += tokens
        self._load -= 1
        try:
            handle = self._handles.get(reply_to)
        except ValueError:   # the requesting agent is gone for good
            handle = None
        if handle is not None and self._outbox is not None:
            self._outbox.send(reply_to, handle, (req_id, text, prompt_tokens, tokens), method=REPLIES)
        for ticket, granted in self.caps[model].release(replica):
            self._start(self._queued.pop(ticket), granted)

    def stats(self) -> dict:
        """Per model: requests served, tokens generated, busy sequence-seconds, capacity, peaks."""
        models = {m: {"served": self.served[m], "tokens": self.tokens[m], "busy_s": self.busy_s[m],
                      "peak_active": self.peak_active[m], "peak_queued": self.peak_queued[m],
                      "replicas": cap.replicas, "max_concurrency": cap.max_concurrency}
                  for m, cap in self.caps.items()}
        return {"models": models, "outbox": self._outbox.stats.as_dict() if self._outbox else None,
                "pid": os.getpid(), "node": actor_info()[2]}

    def ping(self) -> tuple[str, int, str]:
        """Liveness probe: (incarnation, pid, node id)."""
        return actor_info()
