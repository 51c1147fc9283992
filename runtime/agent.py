"""The agent actor: one replica of one agent role (or of a group of co-located roles), a node of the
peer-to-peer message path.

``deliver(batch)`` only enqueues: each delivered message becomes its own asyncio task that fetches the
offloaded history texts it needs, renders the step (``engine.prepare_call``), calls the model (the sim
service, one-way and coalesced) or the tool, applies the reply, and then **routes the message itself**:
to a replica of the next role, chosen by power of two choices on the load reported in acks plus what
this actor still has on its way there, or, when the row is finished, as one output line to the sink.
In central mode every step result goes to the coordinator instead, which routes it.

A replica may host several roles (``Topology.groups``: co-location). A message whose next role is
hosted here is handed over in place, as a new task of this actor: no Ray call, no pickling of its
history, no offloading. The runtime co-locates the roles of a workflow whose models all run outside
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
import pickle
import random
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import ray

from .cluster import Handles, Topology, actor_info, tune_gc
from .engine import AgentSpec, Engine, LLMCall, Reply, StepError
from .message import Message
from .names import CALL_TIMEOUT_S, OFFLOAD_THRESHOLD, RETRIES
from .sink import encode_line, item_key
from .store import TextCache, fetch_texts, needs_offload, offloaded_entry, text_key
from .transport import Held, Outbox, pick_two, spawn, unpack

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


@dataclass(slots=True)
class _Role:
    """One role hosted by a replica: its spec, concurrency bound, call settings and counters."""

    spec: AgentSpec
    sem: asyncio.Semaphore
    timeout_s: float
    retries: int
    calls: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=20000))


@ray.remote(num_cpus=0)
class AgentActor:
    """One replica of an agent role, or of a group of co-located roles."""

    def __init__(self, roles: str | list[str], index: int, cfg: AgentConfig):
        tune_gc()
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
        self._outbox: Outbox | None = None
        self._waiting: dict[int, asyncio.Future] = {}      # req_id -> reply future
        self._deadlines: dict[int, float] = {}              # req_id -> monotonic deadline
        self._sweeper: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()              # one per message being processed
        self._clients: dict = {}                            # model → OpenAIClient
        self._tool_pools: dict = {}                         # tool → ToolPool (least outstanding replica)
        self.cache = TextCache()                            # offloaded texts seen here
        self._requests: dict[int, tuple[str, tuple]] = {}   # req_id -> (sim actor, request)
        self._next_req = int.from_bytes(os.urandom(5), "big") << 24   # distinct per incarnation
        self._reroutes: dict[int, int] = {}
        self.errors = 0
        self.hop_bytes = 0
        self.hops = 0
        self.local_hops = 0
        self.dropped = 0
        self.output_need = self.engine.output_need()

    def _role(self, role: str) -> _Role:
        spec = self.engine.agents[role]
        model = self.engine.ir["models"].get(spec.model or "", {})
        retries = model.get("retries")
        return _Role(spec, asyncio.Semaphore(max(1, spec.max_concurrency)),
                     float(model.get("timeout_s") or self.cfg.call_timeout_s),
                     self.cfg.call_retries if retries is None else int(retries))

    # -- inbound ---------------------------------------------------------------------------------
    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = Outbox(coalesce=self.cfg.coalesce, window_s=self.cfg.window_s,
                                  on_ack=self._on_ack, on_error=self._on_error)
        return self._outbox

    async def deliver(self, batch: bytes | list[Message]) -> int:
        """Accept messages (one-way): each is processed as its own task. Returns this replica's load."""
        batch = unpack(batch)
        for msg in batch:
            self.held[msg.key] += 1
            spawn(self._run(msg), self._tasks)
        return len(self.held)

    async def replies(self, batch: bytes | list[tuple]) -> int:
        """Model replies from the sim service: ``(req_id, text, prompt_tokens, completion_tokens)``."""
        batch = unpack(batch)
        for req_id, text, ptok, ctok in batch:
            self._deadlines.pop(req_id, None)
            fut = self._waiting.pop(req_id, None)
            if fut is not None and not fut.done():
                fut.set_result(Reply(text, ptok, ctok))
        return len(self.held)

    # -- one step --------------------------------------------------------------------------------
    async def _run(self, msg: Message) -> None:
        key, state = msg.key, msg.state
        try:
            if _TIMEOUT is not None:           # limits.row_timeout bounds the step in flight
                cm = _TIMEOUT(self._time_left(msg))
                try:
                    async with cm, self.roles[state].sem:
                        routed = await self._step(msg)
                except TimeoutError:
                    if not cm.expired():
                        raise
                    routed = await self._timed_out(msg, state)
            else:
                try:
                    routed = await asyncio.wait_for(self._bounded_step(msg), self._time_left(msg))
                except asyncio.TimeoutError:
                    routed = await self._timed_out(msg, state)
        except Exception as e:  # noqa: BLE001 - a runtime bug must not lose the row
            routed = self._fail_and_finish(msg, "error", "runtime_error", f"{type(e).__name__}: {e}")
        if not routed:
            self.held.release(key)

    async def _bounded_step(self, msg: Message) -> bool:
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

    async def _step(self, msg: Message) -> bool:
        """Run the message's step; returns False when it was dropped (left for the driver to re-admit)."""
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
        if isinstance(call, LLMCall) and (call.model in self.cfg.openai or call.model in self.cfg.vllm):
            reply, err = await self._call_openai(call, msg.key)
            if reply is None:
                eng.fail(msg, "error", "model_error", err, time.time())
                return await self._finish(msg, texts)
        elif isinstance(call, LLMCall):
            reply = await self._call_model(call, role)
            if reply is None:
                eng.fail(msg, "error", "model_error",
                         f"model {call.model!r}: no reply after {role.retries} retries "
                         f"(timeout {role.timeout_s:g}s)", time.time())
                return await self._finish(msg, texts)
        else:
            reply, err = await self._call_tool(call, role)
            if reply is None:
                eng.fail(msg, "error", "tool_error", err, time.time())
                return await self._finish(msg, texts)
        role.latencies.append(time.perf_counter() - t0)
        role.calls += 1
        try:
            eng.apply_reply(msg, reply, texts, time.time())
        except StepError as e:
            eng.fail(msg, "failed", e.reason, e.detail, time.time())
        if msg.finished:
            return await self._finish(msg, list(texts) + [reply.text])
        self._route(msg)
        return True

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
                self.outbox.send(("offload",), self._sink(), (msg.key, key, text), method="offload")
                hist[i] = offloaded_entry(hist[i]["agent"], text, size, key)

    def _remember_newest(self, msg: Message) -> None:
        """Cache the newest entry when it arrived inline and large: it is offloaded by the next step."""
        if msg.history and needs_offload(msg.history[-1].get("text"), self.cfg.offload_threshold):
            text = msg.history[-1]["text"]
            self.cache.put(text_key(text), text)

    async def _call_model(self, call: LLMCall, role: _Role) -> Reply | None:
        """One model call through the sim service, retried on timeout; None after the last retry."""
        sims = self.topo.sims_of(call.model)
        for _ in range(role.retries + 1):
            req_id = self._next_req
            self._next_req += 1
            fut = self._expect(req_id, role.timeout_s)
            dest = pick_two(sims, lambda n: self.outbox.load(("sim", n)), self.rng)
            req = (self.name, req_id, call.model, call.sim_text, call.sim_tokens, call.prompt_tokens,
                   call.seed_key)
            self._requests[req_id] = (dest, req)
            self.outbox.send(("sim", dest), self.handles.get(dest), req, method="submit")
            try:
                return await fut
            except (asyncio.TimeoutError, ray.exceptions.RayActorError):
                self.errors += 1
            finally:
                self._requests.pop(req_id, None)
        return None

    async def _texts_of(self, row: Hashable, keys: list[str]) -> list[str]:
        """A row's offloaded texts, from the sink (which owns them)."""
        req_id = self._next_req
        self._next_req += 1
        fut = self._expect(req_id, 40.0)
        self.outbox.send(("fetch",), self._sink(), (self.name, req_id, row, keys), method="fetch")
        texts = await fut
        if texts is None:
            raise LookupError(f"offloaded texts {keys} are not in the store")
        return texts

    async def fetched(self, batch: bytes | list[tuple[int, list | None]]) -> int:
        """Answers of the sink to ``_texts_of``: ``(req_id, [text] | None)``."""
        batch = unpack(batch)
        for req_id, texts in batch:
            self._deadlines.pop(req_id, None)
            fut = self._waiting.pop(req_id, None)
            if fut is not None and not fut.done():
                fut.set_result(texts)
        return len(self.held)

    def _expect(self, req_id: int, timeout_s: float) -> asyncio.Future:
        """A future for the reply to ``req_id``, failed with TimeoutError after ``timeout_s``.

        One sweeper task enforces every deadline (cheaper than a timer task per call).
        """
        loop = asyncio.get_running_loop()
        fut = self._waiting[req_id] = loop.create_future()
        self._deadlines[req_id] = time.monotonic() + timeout_s
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())
        return fut

    async def _sweep(self) -> None:
        while self._waiting:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            expired = [r for r, d in self._deadlines.items() if d <= now]
            for req_id in expired:
                self._deadlines.pop(req_id, None)
                fut = self._waiting.pop(req_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(asyncio.TimeoutError())

    def sim_restarted(self, names: list[str]) -> int:
        """A sim service restarted and lost its queue: re-send this replica's requests to it."""
        n = 0
        for dest, req in list(self._requests.values()):
            if dest in names:
                self.outbox.send(("sim", dest), self.handles.get(dest), req, method="submit")
                n += 1
        return n

    async def _call_openai(self, call: LLMCall, key: Hashable) -> tuple[Reply | None, str]:
        """One call to an OpenAI-compatible server (retries, routing and stickiness are the client's)."""
        from .openai_client import ModelCallError, OpenAIClient

        client = self._clients.get(call.model)
        if client is None:
            if call.model in self.cfg.vllm:      # backend vllm: Serve handles to the replicas
                from .serve_deploy import ServeClient

                client = self._clients[call.model] = ServeClient(self.cfg.vllm[call.model])
            else:
                client = self._clients[call.model] = OpenAIClient(self.cfg.openai[call.model])
        try:
            return await client.call(call, key), ""
        except ModelCallError as e:
            self.errors += 1
            return None, f"model {call.model!r}: {e.detail}"

    async def _call_tool(self, call, role: _Role) -> tuple[Reply | None, str]:
        """One tool run through the tool service; (None, detail) when it fails after retries."""
        spec = self.engine.ir["tools"][call.tool]
        pool = self._tool_pools.get(call.tool)
        if pool is None:
            from .toolservice import ToolPool

            handles = [self.handles.get(n) for n in self.topo.tools_of(call.tool)]
            pool = self._tool_pools[call.tool] = ToolPool(call.tool, spec, handles)
        detail = "no tool service"
        for _ in range(self.cfg.call_retries + 1):
            try:
                res = await pool.run(call.input, role.timeout_s + float(spec.get("timeout_s") or 0))
            except (asyncio.TimeoutError, ray.exceptions.RayActorError) as e:
                self.errors += 1
                detail = f"tool {call.tool!r}: {type(e).__name__}"
                continue
            if res.get("error"):   # the sandbox could not run the code at all
                return None, f"tool {call.tool!r}: {res['error']}"
            text = res.get("text")
            if text is None:
                text = res.get("stdout", "") + res.get("stderr", "")
            return Reply(text, 0, 0, res.get("exit_code")), ""
        return None, detail

    # -- outbound --------------------------------------------------------------------------------
    def _sink(self):
        return self.handles.get(self.topo.sink)

    def _route(self, msg: Message) -> None:
        """Send a running message on: in place when its next role is hosted here, else to a replica of
        that role (or to the coordinator). Handed over in place, the message keeps this actor's hold."""
        if msg.state in self.roles and not self.topo.central:
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
            name = pick_two(names, lambda n: self.outbox.load(("agent", n)), self.rng)
        self.outbox.send(("agent", name), self.handles.get(name), msg)

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
        self.outbox.send(("out", name), self.handles.get(name), item)
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
        self.outbox.send(("out", name), self.handles.get(name), item)
        return True

    def _on_ack(self, dest: tuple, batch: list, load) -> None:
        kind = dest[0]
        if self._reroutes:
            for item in batch:
                self._reroutes.pop(id(item), None)
        if kind == "agent":
            for msg in batch:
                self.held.release(msg.key)
        elif kind == "out":
            for key, _, _ in batch:
                self.held.release(key)

    def _on_error(self, dest: tuple, batch: list, exc: BaseException) -> None:
        """A deliver call failed (the receiver died): re-send after a pause, or give the rows up."""
        kind = dest[0]
        if kind in ("sim", "fetch"):
            for req in batch:
                self._deadlines.pop(req[1], None)
                fut = self._waiting.pop(req[1], None)   # the retry loop re-sends it
                if fut is not None and not fut.done():
                    fut.set_exception(ray.exceptions.RayActorError())
            return
        if kind not in ("agent", "out"):
            return
        asyncio.get_running_loop().call_later(0.2, self._resend, dest, batch)

    def _resend(self, dest: tuple, batch: list) -> None:
        for item in batch:
            key = item_key(item)
            tries = self._reroutes.get(id(item), 0) + 1
            if tries > 10:
                self._reroutes.pop(id(item), None)
                self.dropped += 1
                self.held.release(key)          # the driver's lost-row scan re-admits it
                continue
            self._reroutes[id(item)] = tries
            if isinstance(item, Message) and dest[0] == "agent":
                self._route(item)
            else:
                self.outbox.send(dest, self.handles.get(dest[1]), item)

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
                "clients": {m: c.snapshot() for m, c in self._clients.items()},
                "cache": {"hits": self.cache.hits, "misses": self.cache.misses, "chars": self.cache.chars},
                "outbox": self._outbox.stats.as_dict() if self._outbox else None}

    def ping(self) -> tuple[str, int, str]:
        """Liveness probe: (incarnation, pid, node id)."""
        return actor_info()

