"""Central orchestrator mode (``--orchestrator central``), the hub-and-spoke baseline.

One :class:`Coordinator` actor receives every step result and dispatches the next step: the driver
admits rows to it, agents send it each message after every step (instead of routing it themselves),
and it forwards the message to a replica of the next role, or a finished row's output line to the
sink. It uses the same agents, services and coalescing transport as the peer-to-peer mode, so the
two modes differ only in the hub every hop crosses. (The agents still evaluate transitions; a real
central orchestrator would do that work at the hub too, so this baseline is, if anything, flattering
to central orchestration.)
"""

from __future__ import annotations

import random
from collections.abc import Hashable

import ray

from ..control.cluster import Handles, Topology, actor_info, tune_gc
from ..semantics.message import Message
from ..transport.outbox import Held, OutboxOwner, pick_two, unpack
from ..transport.protocol import TO_AGENT, TO_OUTPUT
from .sink import item_key


@ray.remote(num_cpus=0, max_restarts=-1)
class Coordinator(OutboxOwner):
    """The hub: routes every message between agents and to the sink."""

    def __init__(self, topo: Topology, coalesce: bool = True, window_s: float = 0.002):
        tune_gc()
        self.topo = topo
        self.handles = Handles(topo)
        self.rng = random.Random(0)
        self.held = Held()
        self.coalesce, self.window_s = coalesce, window_s
        self.routed = 0

    def _outbox_settings(self) -> tuple[bool, float]:
        return self.coalesce, self.window_s

    async def deliver(self, batch: bytes | list) -> int:
        """Accept messages (running: dispatch the next step) and output items (forward to the sink)."""
        batch = unpack(batch)
        for item in batch:
            self.routed += 1
            if isinstance(item, Message):
                self.held[item.key] += 1
                self._dispatch(item)
            else:
                self.held[item[0]] += 1
                self.outbox.send((TO_OUTPUT,), self.handles.get(self.topo.sink), item)
        return len(self.held)

    def _dispatch(self, msg: Message) -> None:
        names = self.topo.agents(msg.state)
        name = pick_two(names, lambda n: self.outbox.load((TO_AGENT, n)), self.rng)
        self.outbox.send((TO_AGENT, name), self.handles.get(name), msg)

    def _on_ack(self, dest: tuple, batch: list, load) -> None:
        for item in batch:
            self.held.release(item_key(item))

    def _on_error(self, dest: tuple, batch: list, exc: BaseException) -> None:
        """The receiver died: re-dispatch messages (another replica, or the restarted one)."""
        import asyncio

        def resend() -> None:
            for item in batch:
                if isinstance(item, Message):
                    self._dispatch(item)
                else:
                    self.outbox.send((TO_OUTPUT,), self.handles.get(self.topo.sink), item)

        asyncio.get_running_loop().call_later(0.2, resend)

    def held_ids(self) -> list[Hashable]:
        """Row keys held here (received, not yet acknowledged by the next actor)."""
        return list(self.held)

    def stats(self) -> dict:
        """Messages routed and transport counters."""
        return {"routed": self.routed, "held": len(self.held),
                "outbox": self.outbox_stats()}

    def ping(self) -> tuple[str, int, str]:
        """Liveness probe: (incarnation, pid, node id)."""
        return actor_info()
