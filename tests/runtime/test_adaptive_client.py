"""Adaptive concurrency (AIMD) of the openai client against rate-limited `mxc sim-server` subprocesses on
127.0.0.1, and through `run()` on a real local Ray. Counts come from the server's /metrics, not from
timing the test."""

from __future__ import annotations

import asyncio
import json

import pytest
from matrixlang.runtime.backends.openai_client import (
    ModelCallError,
    OpenAIClient,
    close_shared_session,
    retry_after_of,
)
from matrixlang.runtime.backends.simserver import SimServerProcess
from matrixlang.runtime.control.run import RunOptions, run
from support import ir_fixtures as F
from test_openai_client import spec
from test_run_semantics import coral_rows, read_out, write_rows

CHAT = '/v1/chat/completions'


def calls(url: str, n: int, concurrency: int, **kw) -> tuple[list, OpenAIClient]:
    """``n`` chat calls, ``concurrency`` at a time (rows in flight), through one client."""
    async def main():
        c = OpenAIClient(spec([url], **kw))
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int):
            async with sem:
                return await c.chat([{"role": "user", "content": f"q{i}"}], key=i)

        try:
            return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True), c
        finally:
            await close_shared_session()

    return asyncio.run(main())


def count(m: dict, code: int) -> int:
    return int(m.get(f'mx_sim_requests_total{{route="{CHAT}",code="{code}"}}', 0))


@pytest.mark.parametrize("limit", [["--rate-limit-rps", "40", "--rate-limit-burst", "250ms"],
                                   ["--max-concurrent", "6"]], ids=["rps", "concurrent"])
def test_aimd_gets_far_fewer_429s_than_fixed_concurrency_and_every_call_succeeds(limit):
    server = [*limit, "--ttft", "30ms", "--per-token", "0", "--tokens", "4..4"]
    got = {}
    for adaptive in (False, True):
        with SimServerProcess(server) as srv:
            res, client = calls(srv.url, 160, 64, retries=1, adaptive=adaptive, max_limit=64)
            got[adaptive] = (res, client, srv.metrics())
    for adaptive, (res, client, m) in got.items():
        errors = [r for r in res if isinstance(r, BaseException)]
        assert not errors, (adaptive, errors[:3])                 # 429s burnt no attempt: every call ends ok
        assert count(m, 200) == 160 and client.stats.ok == 160
        assert client.stats.throttled == count(m, 429) == client.stats.throttle_free
    fixed429, aimd429 = count(got[False][2], 429), count(got[True][2], 429)
    assert aimd429 * 3 < fixed429, (aimd429, fixed429)
    snap = got[True][1].snapshot()["endpoints"][0]["aimd"]
    assert snap["decreases"] >= 1 and snap["limit"] < 64 and snap["in_flight"] == 0


def test_retry_after_pauses_the_whole_endpoint():
    # one request in twenty is refused with Retry-After: 0.6; more than 0.25 s after such a 429 and before
    # its 0.6 s are up, the server counts any request that arrives ("early"): with the adaptive limit none
    # does (the endpoint pauses), without it the other calls in flight carry on
    server = ["--throttle-rate", "0.05", "--retry-after", "0.6", "--ttft", "50ms", "--per-token", "0", "--seed", "3"]
    early = {}
    for adaptive in (False, True):
        with SimServerProcess(server) as srv:
            res, client = calls(srv.url, 120, 8, retries=1, adaptive=adaptive)
            m = srv.metrics()
        assert not [r for r in res if isinstance(r, BaseException)]
        assert count(m, 429) >= 2 and client.stats.retry_after == count(m, 429)
        early[adaptive] = m["mx_sim_early_requests_total"]
    assert early[True] == 0 and early[False] > 0, early


def test_retry_after_ms_is_read_first():
    assert retry_after_of({"retry-after-ms": "250", "Retry-After": "3"}) == 0.25
    assert retry_after_of({"retry-after-ms": "soon", "Retry-After": "3"}) == 3.0
    assert retry_after_of({"retry-after-ms": "-5"}) == 0.0 and retry_after_of({}) is None


def test_a_server_that_refuses_everything_still_fails_the_call():
    # no call ever succeeds: 429s are free only for throttle_progress_s after a call's first one (0.3 s,
    # a few retries 0.1 s apart), not for all of throttle_wait_s (30 s, hundreds of retries)
    with SimServerProcess(["--throttle-rate", "1", "--retry-after", "0.1"]) as srv:
        res, client = calls(srv.url, 2, 2, retries=1, throttle_progress_s=0.3, throttle_wait_s=30.0)
        m = srv.metrics()
    assert all(isinstance(r, ModelCallError) and "HTTP 429" in r.detail for r in res)
    assert client.stats.failed == 2 and count(m, 429) == client.stats.throttled
    assert 2 <= client.stats.throttle_free < 20 and client.stats.throttled - client.stats.throttle_free == 4


@pytest.mark.ray
@pytest.mark.parametrize("adaptive", [True, False], ids=["aimd", "fixed"])
def test_run_under_a_rate_limit_ends_every_row_ok(ray_local, tmp_path, monkeypatch, adaptive):
    ir = F.coral()
    ir["models"]["llm"]["retries"] = 1
    ir = F.finish(ir)
    rows = coral_rows(40)
    inp, out = write_rows(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    with SimServerProcess(["--rate-limit-rps", "40", "--rate-limit-burst", "250ms"]) as srv:
        monkeypatch.setenv("LLM_URL", srv.url)
        summary = run(ir, RunOptions(input=str(inp), output=str(out), progress="off", print_summary=False,
                                     max_in_flight=40, adaptive_concurrency=adaptive))
        m = srv.metrics()
    got = read_out(out)
    assert sorted(r["_meta"]["id"] for r in got) == sorted(r["id"] for r in rows)
    assert {r["_meta"]["status"] for r in got} == {"ok"}, summary["by_reason"]
    c = summary["clients"]["llm"]
    assert summary["adaptive_concurrency"] is adaptive
    assert c["ok"] == count(m, 200) == summary["steps"] and c["throttled"] == count(m, 429) > 0
    eps = c["endpoints"]
    if adaptive:
        assert sum(e["decreases"] for e in eps.values()) >= 1, json.dumps(c)
    else:
        assert eps == {}
