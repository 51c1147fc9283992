"""mxc sim-server's rate limits (runtime/backends/ratelimit.py, runtime/backends/simserver.py): token buckets, 429 with
Retry-After over real HTTP on 127.0.0.1, counters in /metrics, and the CLI's flags."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from matrixlang.runtime.backends.ratelimit import TokenBucket, admit
from matrixlang.runtime.backends.simserver import SimServerProcess
from test_simserver import chat_body, post, serving


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_admits_its_burst_then_its_rate():
    clock = Clock()
    b = TokenBucket(rate=10.0, capacity=5.0, clock=clock)
    assert [admit([(b, 1.0)]) for _ in range(5)] == [0.0] * 5           # the burst
    assert admit([(b, 1.0)]) == pytest.approx(0.1)                       # then one per 1/rate
    clock.t = 0.1
    assert admit([(b, 1.0)]) == 0.0
    clock.t = 100.0
    assert b.wait(1.0) == 0.0 and b.level == 5.0                         # never more than the capacity


def test_a_request_larger_than_the_bucket_passes_when_full_and_leaves_a_debt():
    clock = Clock()
    b = TokenBucket(rate=2.0, capacity=4.0, clock=clock)
    assert admit([(b, 10.0)]) == 0.0 and b.level == -6.0
    assert admit([(b, 1.0)]) == pytest.approx(3.5)                       # (1 - -6) / 2
    clock.t = 3.5
    assert admit([(b, 1.0)]) == 0.0


def test_refused_by_one_bucket_takes_from_none():
    clock = Clock()
    rps, tpm = TokenBucket(10.0, 10.0, clock), TokenBucket(1.0, 1.0, clock)
    assert admit([(rps, 1.0), (tpm, 1.0)]) == 0.0
    assert admit([(rps, 1.0), (tpm, 1.0)]) == pytest.approx(1.0)
    assert rps.level == 9.0                                              # the refused request took nothing


def test_requests_over_the_rps_limit_get_429_with_retry_after():
    async def main():
        async with serving(rate_limit_rps=5.0, rate_limit_burst_s=1.0) as (srv, url, s):
            first = await asyncio.gather(*(post(s, url + "/chat/completions", chat_body(f"q{i}")) for i in range(8)))
            refused = [r for r in first if r[0] == 429]
            wait = float(refused[0][1]["Retry-After"])
            await asyncio.sleep(wait)
            later = await post(s, url + "/chat/completions", chat_body("again"))
            async with s.get(url.rsplit("/v1", 1)[0] + "/metrics") as r:
                metrics = await r.text()
            return first, refused, later, metrics, srv.metrics

    first, refused, later, metrics, m = asyncio.run(main())
    assert sum(r[0] == 200 for r in first) == 5 and len(refused) == 3
    code, headers, text = refused[0]
    body = json.loads(text)
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "requests"
    assert "requests per second" in body["error"]["message"]
    wait = float(headers["Retry-After"])
    assert 0 < wait <= 0.2 and int(headers["retry-after-ms"]) == pytest.approx(wait * 1000, abs=1)
    assert later[0] == 200                                               # admitted once Retry-After elapsed
    assert m.limited["rps"] == 3 and m.requests[("/v1/chat/completions", 429)] == 3
    assert 'mx_sim_rate_limited_total{limit="rps"} 3' in metrics
    assert 'mx_sim_requests_total{route="/v1/chat/completions",code="429"} 3' in metrics


def test_tokens_per_minute_count_prompt_and_completion_tokens():
    async def main():
        # 120 tokens/min saving up 10 s: a bucket of 20 tokens, refilled at 2 per second
        async with serving(rate_limit_tpm=120.0, rate_limit_burst_s=10.0, tokens=(8, 8)) as (srv, url, s):
            res = [await post(s, url + "/chat/completions", chat_body(c * 39)) for c in "xyz"]
            return res, srv.metrics

    res, m = asyncio.run(main())
    assert [r[0] for r in res] == [200, 429, 429]
    assert json.loads(res[0][2])["usage"]["total_tokens"] == 12 + 8      # (9 + 39 chars) / 4 + completion
    assert m.limited["tpm"] == 2 and m.limited["rps"] == 0
    body = json.loads(res[1][2])
    assert "tokens per minute" in body["error"]["message"]
    assert 0 < float(res[1][1]["Retry-After"]) <= 10.0


def test_max_concurrent_refuses_requests_beyond_it_at_once():
    async def main():
        async with serving(max_concurrent=2, ttft_s=0.5) as (srv, url, s):
            res = await asyncio.gather(*(post(s, url + "/chat/completions", chat_body(f"c{i}")) for i in range(5)))
            return res, srv.metrics

    res, m = asyncio.run(main())
    assert sorted(r[0] for r in res) == [200, 200, 429, 429, 429]
    assert m.limited["concurrency"] == 3
    refused = [r for r in res if r[0] == 429]
    assert all("Retry-After" not in h for _, h, _ in refused)
    assert "concurrent" in json.loads(refused[0][2])["error"]["message"]


def test_the_cli_starts_a_rate_limited_server_and_refuses_bad_limits():
    with SimServerProcess(["--rate-limit-rps", "2", "--rate-limit-burst", "1s"]) as srv:
        assert "rate limit rps 2" in srv.banner
        codes = []
        for i in range(4):
            req = urllib.request.Request(srv.url + "/chat/completions", data=json.dumps(chat_body(f"k{i}")).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    codes.append(r.status)
            except urllib.error.HTTPError as e:
                codes.append(e.code)
                assert float(e.headers["Retry-After"]) > 0
        assert codes.count(200) == 2 and codes.count(429) == 2
        assert srv.metrics()['mx_sim_rate_limited_total{limit="rps"}'] == 2
    for bad, msg in ((["--rate-limit-rps", "-1"], ">= 0"), (["--rate-limit-tpm", "nan"], "finite"),
                     (["--rate-limit-rps", "0.5"], "--rate-limit-burst"), (["--rate-limit-burst", "soon"], "duration")):
        p = subprocess.run([sys.executable, "-m", "matrixlang", "sim-server", "--port", "0", *bad],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, (bad, p.stderr)
