"""The tool service: Ray actors that run `tool kind = "python"` snippets in the sandbox.

One :class:`ToolService` actor per tool replica (`replicas` in the IR tool spec). Each actor is
async: a call waits on a per-tool semaphore of `max_concurrency`, then runs
`sandbox.run_python` in a worker thread of its own pool, so the event loop stays free for other
calls and pings while snippets run. The actor asks for no CPU from Ray (`num_cpus=0`): the work
happens in the snippets' own processes, bounded by the spec's limits and the semaphore.

`run` returns the `SandboxResult` as a dict plus two keys: `text` (what the agent sees, bounded by
`max_output_bytes`, with a note when cut or killed) and `error` (None, or why nothing was run: the
machine cannot enforce the limits, the spec is invalid, or the jail could not start the snippet).
"""

from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from ..control.cluster import actor_info
from ..sandbox.bwrap import Limits, SandboxFailed, SandboxResult, check_support, run_python

_EMPTY = SandboxResult("", "", -1, False, False, 0.0, None)


def _error_reply(reason: str) -> dict[str, Any]:
    return {**_EMPTY.to_dict(), "exit_code": None, "text": "", "error": reason}


@ray.remote(num_cpus=0, max_restarts=-1)
class ToolService:
    """Runs sandboxed snippets for one or more tools, at most `max_concurrency` at once per tool."""

    def __init__(self) -> None:
        self._sems: dict[str, asyncio.Semaphore] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._waiting = 0
        self._running = 0
        self._peak_running: dict[str, int] = {}
        self._running_by_tool: dict[str, int] = {}
        self._completed = 0
        self._refused = 0

    def _slot(self, tool_name: str, spec: dict[str, Any]) -> tuple[asyncio.Semaphore, ThreadPoolExecutor]:
        if tool_name not in self._sems:  # the first spec seen for a tool fixes its concurrency
            limit = max(1, int(spec.get("max_concurrency", 1)))
            self._sems[tool_name] = asyncio.Semaphore(limit)
            self._pools[tool_name] = ThreadPoolExecutor(limit, thread_name_prefix=f"sandbox-{tool_name}")
        return self._sems[tool_name], self._pools[tool_name]

    async def run(self, tool_name: str, spec: dict[str, Any], code: str) -> dict[str, Any]:
        """Run `code` under `spec`; the SandboxResult as a dict, plus `text` and `error`."""
        try:
            lim = Limits.from_spec(spec)
        except (TypeError, ValueError) as exc:
            self._refused += 1
            return _error_reply(f"bad tool spec: {exc}")
        sem, pool = self._slot(tool_name, spec)
        loop = asyncio.get_running_loop()
        self._waiting += 1
        async with sem:
            self._waiting -= 1
            reason = await loop.run_in_executor(pool, check_support, spec)
            if reason is not None:
                self._refused += 1
                return _error_reply(reason)
            self._running += 1
            now = self._running_by_tool.get(tool_name, 0) + 1
            self._running_by_tool[tool_name] = now
            self._peak_running[tool_name] = max(self._peak_running.get(tool_name, 0), now)
            try:
                res = await loop.run_in_executor(pool, run_python, code, spec)
            except SandboxFailed as exc:      # the jail did not start: nothing of the snippet ran
                self._refused += 1
                return _error_reply(str(exc))
            finally:
                self._running -= 1
                self._running_by_tool[tool_name] -= 1
        self._completed += 1
        return {**res.to_dict(), "text": res.text(lim.max_output_bytes), "error": None}

    async def check(self, spec: dict[str, Any]) -> str | None:
        """None if this actor's machine can enforce `spec`, else the reason (see check_support)."""
        return await asyncio.get_running_loop().run_in_executor(None, check_support, spec)

    def stats(self) -> dict[str, Any]:
        """Counters: calls waiting and running now, completed and refused, peak running per tool."""
        return {
            "waiting": self._waiting,
            "running": self._running,
            "completed": self._completed,
            "refused": self._refused,
            "peak_running": dict(self._peak_running),
        }

    def ping(self) -> tuple[str, int, str]:
        """Liveness probe: (incarnation, pid, node id)."""
        return actor_info()


class ToolPool:
    """Client side of one tool's replicas: each call goes to the replica with the fewest of this
    pool's calls outstanding (ties in turn). Use from async code (an actor or the driver)."""

    def __init__(self, tool_name: str, spec: dict[str, Any], handles: list[Any]) -> None:
        if not handles:
            raise ValueError("ToolPool needs at least one ToolService handle")
        self.tool_name, self.spec, self.handles = tool_name, spec, list(handles)
        self._outstanding = [0] * len(self.handles)
        self._turn = itertools.count()

    def _pick(self) -> int:
        start = next(self._turn) % len(self.handles)
        order = [(start + i) % len(self.handles) for i in range(len(self.handles))]
        return min(order, key=lambda i: self._outstanding[i])

    async def run(self, code: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Run `code` on the least-loaded replica; the ToolService.run reply (asyncio.TimeoutError
        after `timeout_s`, RayActorError when the replica died)."""
        i = self._pick()
        self._outstanding[i] += 1
        try:
            ref = self.handles[i].run.remote(self.tool_name, self.spec, code)
            return await (ref if timeout_s is None else asyncio.wait_for(ref, timeout_s))
        finally:
            self._outstanding[i] -= 1
