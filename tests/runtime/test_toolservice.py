"""The tool service on a real local Ray: sandbox runs through actors, concurrency limits, refusals."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any

import pytest
from matrixlang.runtime.actors.tool_service import ToolPool, ToolService
from support.polling import wait_for


def start_tool_services(tool_name: str, spec: dict[str, Any], **options: Any) -> list[Any]:
    """Start `spec["replicas"]` ToolService actors for one tool; `options` go to `.options()`."""
    return [ToolService.options(**options).remote() for _ in range(max(1, int(spec.get("replicas", 1))))]


SPEC = {"kind": "python", "timeout_s": 20.0, "memory_bytes": 256 << 20, "cpu_s": 10.0, "network": False,
        "max_output_bytes": 4096, "replicas": 2, "max_concurrency": 2}

pytestmark = pytest.mark.ray


def named_processes(name: str) -> list[int]:
    """Host pids whose command name (/proc/PID/comm) is `name`."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as fh:
                    if fh.read().strip() == name:
                        pids.append(int(pid))
            except OSError:
                continue
    return pids




def test_run_returns_the_result_and_the_agent_text(ray_local) -> None:
    svc = ToolService.remote()
    res = ray_local.get(svc.run.remote("sandbox", SPEC, "print('ALL TESTS PASSED')\nraise SystemExit(2)"))
    assert res["error"] is None
    assert res["stdout"] == "ALL TESTS PASSED\n" and res["exit_code"] == 2 and res["killed_reason"] is None
    assert res["text"] == "ALL TESTS PASSED\n"
    flood = ray_local.get(svc.run.remote("sandbox", SPEC, "while True:\n    print('z' * 100)"))
    assert flood["killed_reason"] == "output" and len(flood["stdout"]) == 4096
    assert flood["text"].endswith("[killed: output limit] [output truncated]")
    assert len(flood["text"]) <= 4096 + 60
    ray_local.kill(svc)


def test_concurrency_is_limited_per_tool(ray_local) -> None:
    svc = ToolService.remote()
    code = "import time\ntime.sleep(0.8)\nprint('slept')"
    refs = [svc.run.remote("sandbox", SPEC, code) for _ in range(6)]
    refs += [svc.run.remote("other", {**SPEC, "max_concurrency": 3}, code) for _ in range(6)]
    results = ray_local.get(refs)
    assert [r["stdout"] for r in results] == ["slept\n"] * 12
    stats = ray_local.get(svc.stats.remote())
    assert stats["peak_running"] == {"sandbox": 2, "other": 3}
    assert stats["completed"] == 12 and stats["running"] == 0 and stats["waiting"] == 0
    ray_local.kill(svc)


def test_event_loop_stays_free_while_snippets_run(ray_local) -> None:
    svc = ToolService.remote()
    spec = {**SPEC, "max_concurrency": 1}

    def stats() -> dict:
        return ray_local.get(svc.stats.remote())

    long = svc.run.remote("sandbox", spec, "import time\ntime.sleep(30)")
    assert wait_for(lambda: stats()["running"] == 1)  # the long run holds the only slot
    queued = svc.run.remote("sandbox", spec, "print('second')")  # sent after: Ray need not keep call order
    assert wait_for(lambda: stats()["waiting"] == 1)  # answered while the long run holds the slot
    now = stats()
    assert now["running"] == 1 and now["completed"] == 0, now
    assert ray_local.wait([long, queued], num_returns=2, timeout=0)[0] == []
    ray_local.kill(svc)


def test_a_dying_actor_takes_its_sandboxes_with_it(ray_local) -> None:
    svc = ToolService.remote()
    marker = "mx" + secrets.token_hex(6)
    code = f"import os, time\nopen('/proc/self/comm', 'w').write({marker!r})\nos.fork()\ntime.sleep(60)\n"
    ref = svc.run.remote("sandbox", {**SPEC, "timeout_s": 120}, code)
    assert wait_for(lambda: len(named_processes(marker)) == 2)  # the snippet and its child run
    ray_local.kill(svc)  # the actor dies mid-run: its sandbox must not outlive it
    assert wait_for(lambda: not named_processes(marker), 30.0)
    with pytest.raises(ray_local.exceptions.RayActorError):
        ray_local.get(ref)


def test_refusals_come_back_as_errors(ray_local) -> None:
    svc = ToolService.remote()
    bad = ray_local.get(svc.run.remote("sandbox", {**SPEC, "timeout_s": -1}, "print(1)"))
    assert bad["error"].startswith("bad tool spec") and bad["exit_code"] is None
    other = ray_local.get(svc.run.remote("sh", {"kind": "shell"}, "ls"))
    assert "not a python sandbox" in other["error"]
    assert ray_local.get(svc.check.remote(SPEC)) is None
    jail = ray_local.get(svc.run.remote("sandbox", {**SPEC, "memory_bytes": 1 << 20}, "print(1)"))
    assert jail["error"].startswith("the sandbox could not start the snippet") and jail["exit_code"] is None
    assert ray_local.get(svc.stats.remote())["refused"] == 3
    ray_local.kill(svc)


def test_pool_spreads_calls_over_the_replicas(ray_local) -> None:
    handles = start_tool_services("sandbox", SPEC)
    assert len(handles) == SPEC["replicas"]

    async def main() -> list[dict]:
        pool = ToolPool("sandbox", SPEC, handles)
        return await asyncio.gather(*(pool.run(f"import time\ntime.sleep(0.2)\nprint({i})") for i in range(8)))

    results = asyncio.run(main())
    assert [r["stdout"] for r in results] == [f"{i}\n" for i in range(8)]
    per_replica = [ray_local.get(h.stats.remote())["completed"] for h in handles]
    assert per_replica == [4, 4]
    for h in handles:
        ray_local.kill(h)
