"""Where an agent replica sends a message after its step, and how: routing, offloading, finishing.

A running message goes to a replica of its next role, chosen by power of two choices on the load
reported in acks plus what this actor still has on its way there (or in place, when the next role is
hosted here; or to the coordinator, in central mode). Its large history texts go to the sink's store
first. A finished row goes as one output line to the sink. A send whose receiver died is re-sent after
a pause, at most 10 times; then the row is let go, and the driver's lost-row scan re-admits it.
"""

from __future__ import annotations

import asyncio
import functools
import pickle
import time
from collections.abc import Hashable
from typing import Any

import ray

from ..semantics.engine import Engine
from ..semantics.message import Message
from ..transport.outbox import pick_two, spawn
from ..transport.protocol import (
    FETCH,
    OFFLOAD,
    REQUESTS,
    TO_AGENT,
    TO_FETCH,
    TO_OFFLOAD,
    TO_OUTPUT,
)
from ..transport.store import fetch_texts, needs_offload, offloaded_entry, text_key
from .sink import encode_line, item_key


def output_line(engine: Engine, msg: Message, texts) -> tuple[Hashable, bytes, dict]:
    """The sink item of a finished message: (key, JSON line, completion info for the driver)."""
    line = encode_line(engine.output_row(msg, texts))
    u = msg.usage.values()
    info = {"status": msg.status, "reason": msg.reason, "attempt": msg.attempt, "steps": msg.steps,
            "prompt_tokens": sum(x["prompt_tokens"] for x in u),
            "completion_tokens": sum(x["completion_tokens"] for x in u),
            "finished": msg.timing.get("finished"), "driver": msg.driver}
    return msg.key, line, info


def message_bytes(msg: Message) -> int:
    """Pickled size of a message as it travels between actors."""
    return len(pickle.dumps(msg, protocol=5))


class Routing:
    """The outbound half of :class:`~.agent.Agent` (its attributes are the agent's)."""

    cfg: Any
    engine: Engine
    _reroutes: dict[int, int]

    def _sink(self):
        return self.handles.get(self.topo.sink)

    def _offload(self, msg: Message) -> None:
        """Move large history texts to the store (one-way; the message goes on at once with their keys).

        The newest entry stays inline when the next step reads history: it is what that step reads.
        """
        hist, threshold = msg.history, self.cfg.offload_threshold
        keep_newest = self.engine.history_need(msg.state) != "none"
        for i in range(max(0, len(hist) - 2), len(hist)):
            text = hist[i].get("text")
            size = needs_offload(text, threshold)
            if not size:
                continue
            key = text_key(text)
            self.cache.put(key, text)         # this agent will not need to fetch it back
            if i < len(hist) - 1 or not keep_newest:
                self.outbox.send((TO_OFFLOAD,), self._sink(), (msg.key, key, text), method=OFFLOAD)
                hist[i] = offloaded_entry(hist[i]["agent"], text, size, key)

    def _remember_newest(self, msg: Message) -> None:
        """Cache the newest entry when it arrived inline and large: it is offloaded by the next step."""
        if msg.history and needs_offload(msg.history[-1].get("text"), self.cfg.offload_threshold):
            text = msg.history[-1]["text"]
            self.cache.put(text_key(text), text)

    async def _texts_of(self, row: Hashable, keys: list[str]) -> list[str]:
        """A row's offloaded texts, from the sink (which owns them)."""
        req_id = self.pending.new_id()
        fut = self.pending.expect(req_id, 40.0)
        self.outbox.send((TO_FETCH,), self._sink(), (self.name, req_id, row, keys), method=FETCH)
        texts = await fut
        if texts is None:
            raise LookupError(f"offloaded texts {keys} are not in the store")
        return texts

    def _hosted_here(self, msg: Message) -> bool:
        """Whether the message's next role is hosted by this replica (co-location; not in central mode)."""
        return msg.state in self.roles and not self.topo.central

    def _route(self, msg: Message) -> None:
        """Send a running message on: in place when its next role is hosted here (a send that failed
        and is made again; a step's own next step runs in its task), else to a replica of that role
        (or to the coordinator). Handed over in place, the message keeps this actor's hold."""
        if self._hosted_here(msg):
            self.local_hops += 1
            spawn(self._run(msg), self._tasks)
            return
        self._offload(msg)
        if self.cfg.measure_bytes:
            self.hop_bytes += message_bytes(msg)
            self.hops += 1
        if self.topo.central:
            name = self.topo.coordinator
        else:
            names = self.topo.agents(msg.state)
            name = pick_two(names, lambda n: self.outbox.load((TO_AGENT, n)), self.rng)
        self.outbox.send((TO_AGENT, name), self.handles.get(name), msg)

    async def _finish(self, msg: Message, texts) -> bool:
        """Send a finished message's output line to the sink (or the coordinator)."""
        if self.output_need != "none" and any("ref" in e for e in msg.history):
            try:
                texts = await fetch_texts(msg.history, "all", self.cache,
                                          functools.partial(self._texts_of, msg.key))
            except (ray.exceptions.RayError, LookupError, asyncio.TimeoutError):
                self.dropped += 1
                return False
        item = output_line(self.engine, msg, texts)
        name = self.topo.coordinator if self.topo.central else self.topo.sink
        self.outbox.send((TO_OUTPUT, name), self.handles.get(name), item)
        return True

    def _fail_and_finish(self, msg: Message, status: str, reason: str, detail: str) -> bool:
        try:
            if not msg.finished:
                self.engine.fail(msg, status, reason, detail, time.time())
            texts = [e.get("text") for e in msg.history]
            if any(t is None for t in texts) and self.output_need != "none":
                return False          # cannot render without fetching: let the driver re-run it
            item = output_line(self.engine, msg, texts)
        except Exception:  # noqa: BLE001
            return False
        name = self.topo.coordinator if self.topo.central else self.topo.sink
        self.outbox.send((TO_OUTPUT, name), self.handles.get(name), item)
        return True

    def _release(self, key: Hashable) -> None:
        """Let go of one copy of a row; once none is held, the row has left this actor: its model
        clients forget it (its encoded texts)."""
        if self.held.release(key):
            self.services.forget(key)

    def _on_ack(self, dest: tuple, batch: list, load) -> None:
        kind = dest[0]
        if self._reroutes:
            for item in batch:
                self._reroutes.pop(id(item), None)
        if kind == TO_AGENT:
            for msg in batch:
                self._release(msg.key)
        elif kind == TO_OUTPUT:
            for key, _, _ in batch:
                self._release(key)

    def _on_error(self, dest: tuple, batch: list, exc: BaseException) -> None:
        """A deliver call failed (the receiver died): re-send after a pause, or give the rows up."""
        kind = dest[0]
        if kind in REQUESTS:
            for req in batch:
                self.pending.fail(req[1], ray.exceptions.RayActorError())   # the retry loop re-sends it
            return
        if kind not in (TO_AGENT, TO_OUTPUT):
            return
        asyncio.get_running_loop().call_later(0.2, self._resend, dest, batch)

    def _resend(self, dest: tuple, batch: list) -> None:
        for item in batch:
            key = item_key(item)
            tries = self._reroutes.get(id(item), 0) + 1
            if tries > 10:
                self._reroutes.pop(id(item), None)
                self.dropped += 1
                self._release(key)              # the driver's lost-row scan re-admits it
                continue
            self._reroutes[id(item)] = tries
            if isinstance(item, Message) and dest[0] == TO_AGENT:
                self._route(item)
            else:
                self.outbox.send(dest, self.handles.get(dest[1]), item)
