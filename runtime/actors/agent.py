"""The agent actor: one replica of one agent role (or of a group of co-located roles), a node of the
peer-to-peer message path.

``deliver(batch)`` only enqueues: each delivered message becomes its own asyncio task that fetches the
offloaded history texts it needs, renders the step (``engine.prepare_call``), makes the call
(``calls.py``: the sim service, an OpenAI-compatible or Serve model, or the tool service), applies the
reply, and then **routes the message itself** (``routing.py``): to a replica of the next role, or, when
the row is finished, as one output line to the sink. In central mode every step result goes to the
coordinator instead, which routes it.

A replica may host several roles (``Topology.groups``: co-location). A message whose next role is
hosted here is handed over in place, its next step run in the same task: no Ray call, no pickling
of its history, no offloading, no wait behind the other tasks of the event loop. The runtime co-locates the roles of a workflow whose models all run outside
the cluster (``openai``/``vllm``), where an actor hop costs more CPU than the step itself
(docs/benchmarks.md, the HTTP path).

A message stays *held* (``held_ids``) from its delivery until the next actor has acknowledged it (or,
handed over in place, until its next step is done), so the driver can find rows that no live actor
holds after an actor died.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

import ray

from ..control.cluster import Handles, Topology, actor_info, tune_gc
from ..names import CALL_TIMEOUT_S, OFFLOAD_THRESHOLD, RETRIES
from ..semantics.engine import Engine, LLMCall, Reply, StepError
from ..semantics.message import Message
from ..transport.outbox import Held, OutboxOwner, spawn, unpack
from ..transport.store import TextCache, fetch_texts
from .calls import CallFailed, Role, ServiceCalls, SimCalls, ToolCalls
from .pending import Pending
from .routing import Routing

HERE = "here"   # a step's outcome: the message's next role is hosted by this replica
_TIMEOUT = getattr(asyncio, "timeout", None)   # Python 3.11+: no task per step (else asyncio.wait_for)


@dataclass(slots=True)
class AgentConfig:
    """What every agent replica of a run is built from."""

    ir: dict
    topo: Topology
    seed: int = 0
    backend: str | None = None
    offload_threshold: int = OFFLOAD_THRESHOLD
    coalesce: bool = True
    window_s: float = 0.002
    measure_bytes: bool = False
    call_retries: int = RETRIES
    call_timeout_s: float = CALL_TIMEOUT_S
    openai: dict = field(default_factory=dict)   # model → openai_client.OpenAIModel (resolved by the driver)
    vllm: dict = field(default_factory=dict)     # model → serve_deploy.VLLMModel (resolved by the driver)


class Agent(Routing, OutboxOwner):
    """One replica of an agent role, or of a group of co-located roles: its state and its steps. A
    plain object inside :class:`AgentActor`: Ray wraps every method of an actor class for tracing (a
    check on each call, one more coroutine on each await), and the steps call many of them."""

    def __init__(self, roles: str | list[str], index: int, cfg: AgentConfig):
        roles = [roles] if isinstance(roles, str) else list(roles)
        self.role, self.index, self.cfg = "+".join(roles), index, cfg
        # openai models served by mxc sim-server get the simulator's replies: render them (mx_sim hints)
        hinted = any(m.sim_hints for m in cfg.openai.values())
        self.engine = Engine(cfg.ir, seed=cfg.seed, backend="sim" if hinted else cfg.backend)
        self.roles = {r: self._role(r) for r in roles}
        self.topo = cfg.topo
        self.name = cfg.topo.agent(roles[0], index)
        self.handles = Handles(cfg.topo)
        self.rng = random.Random(f"{self.name}:{os.getpid()}")
        self.held = Held()  # row key -> copies held (processing or unacked)
        self._tasks: set[asyncio.Task] = set()              # one per message being processed
        self.pending = Pending()                            # sim replies and fetched texts awaited
        self.sim = SimCalls(self.name, self.topo, self.handles, lambda: self.outbox, self.pending, self.rng)
        self.services = ServiceCalls(cfg.openai, cfg.vllm)
        self.tools = ToolCalls(self.engine.tools, self.topo, self.handles, cfg.call_retries)
        self.cache = TextCache()                            # offloaded texts seen here
        self._reroutes: dict[int, int] = {}
        self.hop_bytes = 0
        self.hops = 0
        self.local_hops = 0
        self.dropped = 0
        self.output_need = self.engine.output_need()

    def _role(self, role: str) -> Role:
        spec = self.engine.agents[role]
        model = self.engine.models.get(spec.model or "")
        timeout = model.timeout_s if model is not None else None
        retries = model.retries if model is not None else None
        return Role(spec, asyncio.Semaphore(max(1, spec.max_concurrency)),
                    timeout or self.cfg.call_timeout_s, self.cfg.call_retries if retries is None else retries)

    @property
    def errors(self) -> int:
        """Calls that failed (and were retried, or failed the row)."""
        return self.sim.errors + self.services.errors + self.tools.errors

    # -- inbound ---------------------------------------------------------------------------------
    def deliver(self, batch: bytes | list[Message]) -> int:
        """Accept messages (one-way): each is processed as its own task. Returns this replica's load."""
        batch = unpack(batch)
        for msg in batch:
            self.held[msg.key] += 1
            spawn(self._run(msg), self._tasks)
        return len(self.held)

    def replies(self, batch: bytes | list[tuple]) -> int:
        """Model replies from the sim service: ``(req_id, text, prompt_tokens, completion_tokens)``."""
        for req_id, text, ptok, ctok in unpack(batch):
            self.pending.resolve(req_id, Reply(text, ptok, ctok))
        return len(self.held)

    def fetched(self, batch: bytes | list[tuple[int, list | None]]) -> int:
        """Answers of the sink to ``_texts_of``: ``(req_id, [text] | None)``."""
        for req_id, texts in unpack(batch):
            self.pending.resolve(req_id, texts)
        return len(self.held)

    def sim_restarted(self, names: list[str]) -> int:
        """A sim service restarted and lost its queue: re-send this replica's requests to it."""
        return self.sim.restarted(names)

    # -- one step --------------------------------------------------------------------------------
    async def _run(self, msg: Message) -> None:
        """Run the message's step and, in this same task, each next step whose role this replica
        hosts (handed over in place: no new task, so no wait behind everything else the event loop
        has ready), until the message is sent on, finished or dropped. The row's ``row_timeout`` cuts
        off the step in flight: one deadline for all of them (it is the row's, from its admission)."""
        key = msg.key
        state = msg.state
        routed: bool | str = HERE
        try:
            if _TIMEOUT is not None:
                cm = _TIMEOUT(self._time_left(msg))
                try:
                    async with cm:
                        while routed is HERE:
                            state = msg.state
                            async with self.roles[state].sem:
                                routed = await self._step(msg)
                except TimeoutError:
                    if not cm.expired():
                        raise
                    routed = await self._timed_out(msg, state)
            else:                                  # Python 3.10: a timeout per step
                while routed is HERE:
                    state = msg.state
                    try:
                        routed = await asyncio.wait_for(self._bounded_step(msg), self._time_left(msg))
                    except asyncio.TimeoutError:
                        routed = await self._timed_out(msg, state)
        except Exception as e:  # noqa: BLE001 - a runtime bug must not lose the row
            routed = self._fail_and_finish(msg, "error", "runtime_error", f"{type(e).__name__}: {e}")
        if not routed:
            self._release(key)

    async def _bounded_step(self, msg: Message) -> bool | str:
        async with self.roles[msg.state].sem:
            return await self._step(msg)

    def _time_left(self, msg: Message) -> float:
        """Seconds left of the row's ``limits.row_timeout`` (measured from its admission)."""
        admitted = msg.timing.get("admitted")
        if admitted is None:
            return self.engine.row_timeout_s
        return max(0.0, admitted + self.engine.row_timeout_s - time.time())

    async def _timed_out(self, msg: Message, state: str) -> bool:
        """The row ran out of time in a step (waiting for its turn, a model, a tool or its texts):
        written as failed, reason row_timeout (a row that had already finished keeps its outcome)."""
        if not msg.finished:
            now = time.time()
            admitted = msg.timing.get("admitted") or now
            self.engine.fail(msg, "failed", "row_timeout",
                             f"row running for {now - admitted:.1f}s > limits.row_timeout_s = "
                             f"{self.engine.row_timeout_s:g}; cut off in a step of {state}", now)
        try:
            return await self._finish(msg, [e.get("text") for e in msg.history])
        except Exception as e:  # noqa: BLE001
            return self._fail_and_finish(msg, "error", "runtime_error", f"{type(e).__name__}: {e}")

    async def _step(self, msg: Message) -> bool | str:
        """Run the message's step; returns False when it was dropped (left for the driver to re-admit),
        ``HERE`` when its next role is hosted here (the caller runs that step), else True."""
        eng = self.engine
        role = self.roles[msg.state]
        try:
            texts = await fetch_texts(msg.history, eng.history_need(msg.state), self.cache,
                                      functools.partial(self._texts_of, msg.key))
        except (ray.exceptions.RayError, LookupError, asyncio.TimeoutError):
            self.dropped += 1      # its offloaded texts are gone (the sink restarted): re-run it
            return False
        self._remember_newest(msg)
        try:
            call = eng.prepare_call(msg, texts)
        except StepError as e:
            eng.fail(msg, "failed", e.reason, e.detail, time.time())
            return await self._finish(msg, texts)
        t0 = time.perf_counter()
        try:
            reply = await self._calls(call).call(call, msg.key, role)
        except CallFailed as e:
            eng.fail(msg, "error", e.reason, e.detail, time.time())
            return await self._finish(msg, texts)
        role.latencies.append(time.perf_counter() - t0)
        role.calls += 1
        try:
            eng.apply_reply(msg, reply, texts, time.time())
        except StepError as e:
            eng.fail(msg, "failed", e.reason, e.detail, time.time())
        if msg.finished:
            return await self._finish(msg, list(texts) + [reply.text])
        if self._hosted_here(msg):
            self.local_hops += 1
            return HERE
        self._route(msg)
        return True

    def _calls(self, call) -> SimCalls | ServiceCalls | ToolCalls:
        """Who makes ``call``: the tool service, a model service outside the cluster or the sim service."""
        if not isinstance(call, LLMCall):
            return self.tools
        return self.services if self.services.serves(call.model) else self.sim

    # -- introspection ---------------------------------------------------------------------------
    def held_ids(self) -> list[Hashable]:
        """Row keys this replica holds (processing, or sent and not yet acknowledged)."""
        return list(self.held)

    def stats(self) -> dict:
        """Calls, call latencies (seconds), errors, transport counters, bytes per hop."""
        return {"role": self.role, "index": self.index, "errors": self.errors,
                "calls": sum(r.calls for r in self.roles.values()),
                "roles": {name: {"calls": r.calls, "latencies": list(r.latencies)} for name, r in self.roles.items()},
                "held": len(self.held), "dropped": self.dropped, "local_hops": self.local_hops,
                "hops": self.hops, "hop_bytes": self.hop_bytes, "node": actor_info()[2],
                "clients": {m: c.snapshot() for m, c in self.services.clients.items()},
                "cache": {"hits": self.cache.hits, "misses": self.cache.misses, "chars": self.cache.chars},
                "outbox": self.outbox_stats()}



@ray.remote(num_cpus=0)
class AgentActor:
    """The Ray actor of one agent replica: :class:`Agent` behind the methods other actors call."""

    def __init__(self, roles: str | list[str], index: int, cfg: AgentConfig):
        tune_gc()
        self.agent = Agent(roles, index, cfg)

    async def deliver(self, batch: bytes | list[Message]) -> int:
        """Accept messages (one-way); returns this replica's load (:meth:`Agent.deliver`)."""
        return self.agent.deliver(batch)

    async def replies(self, batch: bytes | list[tuple]) -> int:
        """Model replies from the sim service (:meth:`Agent.replies`)."""
        return self.agent.replies(batch)

    async def fetched(self, batch: bytes | list[tuple[int, list | None]]) -> int:
        """Offloaded texts from the sink (:meth:`Agent.fetched`)."""
        return self.agent.fetched(batch)

    def sim_restarted(self, names: list[str]) -> int:
        """A sim service restarted and lost its queue: re-send this replica's requests to it."""
        return self.agent.sim_restarted(names)

    def held_ids(self) -> list[Hashable]:
        """Row keys this replica holds (processing, or sent and not yet acknowledged)."""
        return self.agent.held_ids()

    def stats(self) -> dict:
        """Calls, call latencies (seconds), errors, transport counters, bytes per hop."""
        return self.agent.stats()

    def ping(self) -> tuple[str, int, str]:
        """Liveness probe: (incarnation, pid, node id)."""
        return actor_info()

