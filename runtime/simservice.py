"""The in-cluster simulated LLM service: a Ray actor modelling GPU inference servers.

One :class:`SimService` actor models some replicas of one model (``replicas`` × ``max_concurrency``
sequences decoding at once, FIFO queueing when full, continuous-batching slowdown; see
``simmodel.SimCapacity``). Requests and replies travel one-way and coalesced: an agent delivers a
batch of requests to :meth:`SimService.submit` (returns at once with the service's load), and the
service delivers each reply to the requesting agent's ``replies`` method when its simulated decode
finishes. A reply's text is the call's rendered ``sim`` template, or deterministic filler text of the
drawn length; usage is the call's prompt estimate and the drawn completion length.

A request is ``(reply_to, req_id, sim_text, sim_tokens, prompt_tokens, seed_key)``; a reply is
``(req_id, text, prompt_tokens, completion_tokens)``.
"""

from __future__ import annotations

import asyncio
import os

import ray

from .cluster import Handles, Topology, actor_info
from .simmodel import SimCapacity, sim_reply
from .transport import Outbox


@ray.remote(num_cpus=0, max_restarts=-1)
class SimService:
    """Simulated GPU servers for one model (a share of its ``sim.replicas``)."""

    def __init__(self, sim: dict, replicas: int, topo: Topology, coalesce: bool = True):
        self.cap = SimCapacity(replicas, sim["max_concurrency"], sim["ttft_s"], sim["per_token_s"])
        self._handles = Handles(topo)
        self._coalesce = coalesce
        self._outbox: Outbox | None = None
        self._next = 0
        self._queued: dict[int, tuple] = {}
        self.served = 0
        self.tokens = 0
        self.busy_s = 0.0      # sum of decode durations (sequence-seconds)
        self.peak_active = 0
        self.peak_queued = 0

    async def submit(self, batch: list[tuple]) -> int:
        """Accept requests (one-way); returns the load: sequences decoding plus queued."""
        if self._outbox is None:
            self._outbox = Outbox(coalesce=self._coalesce)
        for req in batch:
            ticket = self._next
            self._next += 1
            replica = self.cap.acquire(ticket)
            if replica is None:
                self._queued[ticket] = req
                self.peak_queued = max(self.peak_queued, self.cap.queued)
            else:
                self._start(req, replica)
        return self.cap.in_flight + self.cap.queued

    def _start(self, req: tuple, replica: int) -> None:
        active = self.cap.active(replica)
        self.peak_active = max(self.peak_active, self.cap.in_flight)
        duration = self.cap.duration(req[3], active)
        self.busy_s += duration
        loop = asyncio.get_running_loop()
        if duration <= 0:
            loop.call_soon(self._finish, req, replica)
        else:
            loop.call_later(duration, self._finish, req, replica)

    def _finish(self, req: tuple, replica: int) -> None:
        reply_to, req_id, sim_text, tokens, prompt_tokens, seed_key = req
        text = sim_reply(sim_text, tokens, seed_key)
        self.served += 1
        self.tokens += tokens
        try:
            handle = self._handles.get(reply_to)
        except ValueError:   # the requesting agent is gone for good
            handle = None
        if handle is not None and self._outbox is not None:
            self._outbox.send(reply_to, handle, (req_id, text, prompt_tokens, tokens), method="replies")
        for ticket, granted in self.cap.release(replica):
            self._start(self._queued.pop(ticket), granted)

    def stats(self) -> dict:
        """Requests served, tokens generated, busy sequence-seconds, peaks, transport counters."""
        return {"served": self.served, "tokens": self.tokens, "busy_s": self.busy_s,
                "peak_active": self.peak_active, "peak_queued": self.peak_queued,
                "replicas": self.cap.replicas, "max_concurrency": self.cap.max_concurrency,
                "outbox": self._outbox.stats.as_dict() if self._outbox else None, "pid": os.getpid()}

    def ping(self) -> tuple[str, int, str]:
        """Liveness probe: (incarnation, pid, node id)."""
        return actor_info()
