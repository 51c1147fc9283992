"""The calls an agent's step makes, one class per backend, with one return convention: ``call``
returns the :class:`Reply` or raises :class:`CallFailed` (the row's reason and detail) once its retries
are spent.

* :class:`SimCalls`: the in-cluster sim service, one-way and coalesced (replies come back to
  ``AgentActor.replies``), retried on timeout;
* :class:`ServiceCalls`: an OpenAI-compatible server (``openai``) or a Serve application (``vllm``);
  retries, routing and stickiness are the client's;
* :class:`ToolCalls`: the tool service's sandbox, retried when a replica times out or dies.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray

from ..control.cluster import Handles, Topology
from ..ir import ToolSpec
from ..semantics.engine import AgentSpec, LLMCall, Reply, ToolCall
from ..transport.outbox import Outbox, pick_two
from ..transport.protocol import SUBMIT, TO_SIM
from .pending import Pending


class CallFailed(Exception):
    """A call that has no reply after its retries; ``reason`` is the row's (model_error, tool_error)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(slots=True)
class Role:
    """One role hosted by a replica: its spec, concurrency bound, call settings and counters."""

    spec: AgentSpec
    sem: asyncio.Semaphore
    timeout_s: float
    retries: int
    calls: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=20000))


class SimCalls:
    """Model calls through the sim services of the run."""

    def __init__(self, name: str, topo: Topology, handles: Handles, outbox: Callable[[], Outbox],
                 pending: Pending, rng: Any) -> None:
        self.name, self.topo, self.handles, self.outbox, self.pending, self.rng = (
            name, topo, handles, outbox, pending, rng)
        self.requests: dict[int, tuple[str, tuple]] = {}   # req_id -> (sim actor, request)
        self.errors = 0

    async def call(self, call: LLMCall, key: Hashable, role: Role) -> Reply:
        """One model call, retried on timeout or a dead sim service."""
        sims = self.topo.sims_of(call.model)
        outbox = self.outbox()
        for _ in range(role.retries + 1):
            req_id = self.pending.new_id()
            fut = self.pending.expect(req_id, role.timeout_s)
            dest = pick_two(sims, lambda n: outbox.load((TO_SIM, n)), self.rng)
            req = (self.name, req_id, call.model, call.sim_text, call.sim_tokens, call.prompt_tokens,
                   call.seed_key)
            self.requests[req_id] = (dest, req)
            outbox.send((TO_SIM, dest), self.handles.get(dest), req, method=SUBMIT)
            try:
                return await fut
            except (asyncio.TimeoutError, ray.exceptions.RayActorError):
                self.errors += 1
            finally:
                self.requests.pop(req_id, None)
        raise CallFailed("model_error", f"model {call.model!r}: no reply after {role.retries} retries "
                                        f"(timeout {role.timeout_s:g}s)")

    def restarted(self, names: list[str]) -> int:
        """Sim services that restarted and lost their queues: re-send the requests waiting on them."""
        n = 0
        for dest, req in list(self.requests.values()):
            if dest in names:
                self.outbox().send((TO_SIM, dest), self.handles.get(dest), req, method=SUBMIT)
                n += 1
        return n


class ServiceCalls:
    """Model calls to services outside the cluster: ``openai`` servers and ``vllm`` Serve applications."""

    def __init__(self, openai: dict, vllm: dict) -> None:
        self.openai, self.vllm = openai, vllm
        self.clients: dict = {}                            # model → OpenAIClient | ServeClient
        self.errors = 0
        self._error: Any = ()                              # ModelCallError, once a client is made

    def forget(self, key: Hashable) -> None:
        """Row ``key`` has left this actor: drop what the clients keep for it."""
        for client in self.clients.values():
            forget = getattr(client, "forget", None)
            if forget is not None:
                forget(key)

    def serves(self, model: str) -> bool:
        """Whether ``model`` is called here (not on the sim service)."""
        return model in self.openai or model in self.vllm

    def _client(self, model: str) -> Any:
        from ..backends.openai_client import ModelCallError, OpenAIClient

        self._error = ModelCallError
        if model in self.vllm:      # backend vllm: Serve handles to the replicas
            from ..backends.serve_deploy import ServeClient

            client = self.clients[model] = ServeClient(self.vllm[model])
        else:
            client = self.clients[model] = OpenAIClient(self.openai[model])
        return client

    async def call(self, call: LLMCall, key: Hashable, role: Role) -> Reply:
        """One call; ``key`` keeps a row on one endpoint (the client's stickiness)."""
        client = self.clients.get(call.model) or self._client(call.model)
        try:
            return await client.call(call, key)
        except self._error as e:
            self.errors += 1
            raise CallFailed("model_error", f"model {call.model!r}: {e.detail}") from None


class ToolCalls:
    """Tool runs through the tool services (each call to the replica with the fewest outstanding)."""

    def __init__(self, tools: Mapping[str, ToolSpec], topo: Topology, handles: Handles, retries: int) -> None:
        self.tools, self.topo, self.handles, self.retries = tools, topo, handles, retries
        self.pools: dict = {}                              # tool → ToolPool
        self.errors = 0

    async def call(self, call: ToolCall, key: Hashable, role: Role) -> Reply:
        """One tool run; a sandbox that cannot run the code at all fails at once."""
        spec = self.tools[call.tool]
        pool = self.pools.get(call.tool)
        if pool is None:
            from .tool_service import ToolPool

            handles = [self.handles.get(n) for n in self.topo.tools_of(call.tool)]
            pool = self.pools[call.tool] = ToolPool(call.tool, spec.sandbox_spec(), handles)
        detail = "no tool service"
        for _ in range(self.retries + 1):
            try:
                res = await pool.run(call.input, role.timeout_s + spec.timeout_s)
            except (asyncio.TimeoutError, ray.exceptions.RayActorError) as e:
                self.errors += 1
                detail = f"tool {call.tool!r}: {type(e).__name__}"
                continue
            if res.get("error"):   # the sandbox could not run the code at all
                raise CallFailed("tool_error", f"tool {call.tool!r}: {res['error']}")
            text = res.get("text")
            if text is None:
                text = res.get("stdout", "") + res.get("stderr", "")
            return Reply(text, 0, 0, res.get("exit_code"))
        raise CallFailed("tool_error", detail)
