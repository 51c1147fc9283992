"""mxc sim-server: the OpenAI-compatible simulated LLM over real HTTP on 127.0.0.1.

Most tests run the server in the test's event loop (real sockets, real aiohttp); the CLI tests start
`mxc sim-server` as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys

import aiohttp
import pytest
from matrixlang.runtime.backends.simmodel import filler_text
from matrixlang.runtime.backends.simserver import SimServer, SimServerConfig, SimServerProcess

from matrixlang.commands.sim_server import duration, token_range


@contextlib.asynccontextmanager
async def serving(environ: dict | None = None, **kw):
    kw = {"ttft_s": 0.0, "per_token_s": 0.0, **kw}      # no simulated latency unless a test wants it
    srv = SimServer(SimServerConfig(port=0, **kw), environ)
    await srv.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield srv, f"http://127.0.0.1:{srv.port}/v1", session
    finally:
        await srv.stop()


async def post(session, url, body, headers=None):
    async with session.post(url, json=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.text()


def chat_body(content="What is 2+2?", **kw):
    return {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": content}], **kw}


def test_chat_reply_usage_and_determinism():
    async def main():
        async with serving(seed=4, tokens=(5, 30)) as (_, url, s):
            code, _, text = await post(s, url + "/chat/completions", chat_body(max_tokens=12))
            again = await post(s, url + "/chat/completions", chat_body(max_tokens=12))
            other = [await post(s, url + "/chat/completions", chat_body(f"q{i}")) for i in range(8)]
        async with serving(seed=5, tokens=(5, 30)) as (_, url, s):
            other5 = [await post(s, url + "/chat/completions", chat_body(f"q{i}")) for i in range(8)]
        return code, json.loads(text), json.loads(again[2]), other, other5

    code, d, d2, other, other5 = asyncio.run(main())
    assert code == 200
    assert d["object"] == "chat.completion" and d["model"] == "m"
    msg = d["choices"][0]["message"]
    assert msg["role"] == "assistant"
    u = d["usage"]
    assert u["prompt_tokens"] == max(1, (len("Be brief.") + len("What is 2+2?")) // 4)
    assert 5 <= u["completion_tokens"] <= 12
    assert len(msg["content"].split()) == u["completion_tokens"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert d["choices"][0]["finish_reason"] == ("length" if u["completion_tokens"] == 12 else "stop")
    assert d2["choices"] == d["choices"] and d2["usage"] == u          # same seed, same request: same reply
    texts4 = [json.loads(t)["choices"][0]["message"]["content"] for _, _, t in other]
    texts5 = [json.loads(t)["choices"][0]["message"]["content"] for _, _, t in other5]
    assert len(set(texts4)) == 8 and texts4 != texts5                  # the seed and the request matter


def test_mx_sim_hint_steers_the_reply():
    async def main():
        async with serving(tokens=(100, 200)) as (_, url, s):
            a = await post(s, url + "/chat/completions",
                           chat_body(mx_sim={"text": "I think so. Answer: C", "tokens": 9, "seed": "0:q1:0"}))
            b = await post(s, url + "/chat/completions",
                           chat_body(mx_sim={"text": None, "tokens": 7, "seed": "3:q2:4"}))
            bad = await post(s, url + "/chat/completions", chat_body(mx_sim={"text": 3, "tokens": 7, "seed": "x"}))
        return a, b, bad

    a, b, bad = asyncio.run(main())
    da, db = json.loads(a[2]), json.loads(b[2])
    assert da["choices"][0]["message"]["content"] == "I think so. Answer: C"
    assert da["usage"]["completion_tokens"] == 9
    assert db["choices"][0]["message"]["content"] == filler_text(7, "3:q2:4")
    assert db["usage"]["completion_tokens"] == 7
    assert bad[0] == 400 and "mx_sim.text" in json.loads(bad[2])["error"]["message"]


def test_completions_and_models_and_bad_requests():
    async def main():
        async with serving(models=("alpha", "beta"), tokens=(3, 3)) as (_, url, s):
            c = await post(s, url + "/completions", {"model": "alpha", "prompt": "Once upon a time", "max_tokens": 8})
            async with s.get(url + "/models") as r:
                models = await r.json()
            e1 = await post(s, url + "/chat/completions", {"model": "m", "messages": []})
            e2 = await post(s, url + "/completions", {"prompt": 5})
            async with s.post(url + "/chat/completions", data=b"{not json") as r:
                e3 = r.status
            async with s.get(url + "/nowhere") as r:
                e4 = r.status
        return c, models, e1, e2, e3, e4

    c, models, e1, e2, e3, e4 = asyncio.run(main())
    d = json.loads(c[2])
    assert d["object"] == "text_completion"
    assert len(d["choices"][0]["text"].split()) == 3 == d["usage"]["completion_tokens"]
    assert d["usage"]["prompt_tokens"] == len("Once upon a time") // 4
    assert [m["id"] for m in models["data"]] == ["alpha", "beta"]
    assert {m["owned_by"] for m in models["data"]} == {"matrixlang-sim"}
    assert (e1[0], e2[0], e3, e4) == (400, 400, 400, 404)
    assert "messages" in json.loads(e1[2])["error"]["message"]


@pytest.mark.parametrize("chat", [True, False])
def test_streaming_matches_the_plain_reply(chat):
    route = "/chat/completions" if chat else "/completions"
    body = chat_body() if chat else {"model": "m", "prompt": "Tell me a story"}

    async def main():
        async with serving(tokens=(40, 60), ttft_s=0.001, per_token_s=0.0001) as (_, url, s):
            plain = json.loads((await post(s, url + route, body))[2])
            async with s.post(url + route, json={**body, "stream": True}) as r:
                ctype = r.content_type
                raw = (await r.read()).decode()
        return plain, ctype, raw

    plain, ctype, raw = asyncio.run(main())
    assert ctype == "text/event-stream"
    events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage == [plain["usage"]]
    if chat:
        pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
        expect = plain["choices"][0]["message"]["content"]
    else:
        pieces = [c["choices"][0]["text"] for c in chunks if c["choices"]]
        expect = plain["choices"][0]["text"]
    assert len(pieces) > 2 and "".join(pieces) == expect
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finals[-1] == "stop" and set(finals[:-1]) == {None}


def test_fault_injection_is_deterministic_in_the_seed():
    bodies = [chat_body(f"question {i}") for i in range(40)]

    async def pattern(seed):
        async with serving(seed=seed, error_rate=0.3, throttle_rate=0.2, retry_after="0") as (srv, url, s):
            out = [(await post(s, url + "/chat/completions", b))[:2] for b in bodies]
            again = [(await post(s, url + "/chat/completions", b))[0] for b in bodies[:10]]
            return out, again, dict(srv.metrics.injected)

    a, again, inj = asyncio.run(pattern(11))
    b, _, _ = asyncio.run(pattern(11))
    c, _, _ = asyncio.run(pattern(12))
    codes = [code for code, _ in a]
    assert codes == [code for code, _ in b]                      # same seed: same faults
    assert codes != [code for code, _ in c]                      # another seed: others
    assert set(codes) == {200, 429, 500}
    assert inj["error"] == codes.count(500) + again.count(500)
    assert all(h.get("Retry-After") == "0" for code, h in a if code == 429)
    # a repeated request draws again (a retry is not doomed to repeat its fault)
    assert again != codes[:10] or set(again) == {200}


def test_timeout_fault_holds_the_request():
    async def main():
        async with serving(timeout_rate=1.0, timeout_hold_s=30) as (srv, url, s):
            with pytest.raises(asyncio.TimeoutError):
                async with s.post(url + "/chat/completions", json=chat_body(),
                                  timeout=aiohttp.ClientTimeout(total=0.3)) as r:
                    await r.read()
            return dict(srv.metrics.injected), srv.cap.in_flight

    inj, in_flight = asyncio.run(main())
    assert inj["timeout"] == 1
    assert in_flight == 0           # a held request never took a decode slot


def test_capacity_bounds_concurrent_decoding():
    async def main():
        async with serving(replicas=1, max_concurrency=2, ttft_s=0.4, per_token_s=0.0, tokens=(1, 1)) as (srv, url, s):
            res = await asyncio.gather(*(post(s, url + "/chat/completions", chat_body(f"c{i}")) for i in range(6)))
            async with s.get(url.replace("/v1", "/metrics")) as r:
                prom = await r.text()
            return res, srv.metrics, prom

    res, m, prom = asyncio.run(main())
    assert [r[0] for r in res] == [200] * 6
    assert m.peak_active == 2                 # never more than max_concurrency decoding
    assert m.peak_queued >= 1                 # the rest waited for a slot
    assert 'mx_sim_requests_total{route="/v1/chat/completions",code="200"} 6' in prom
    assert "mx_sim_peak_active 2" in prom and "mx_sim_capacity 2" in prom


def test_api_key_is_required_and_never_echoed():
    key = "sk-test-" + secrets.token_hex(8)

    async def main():
        async with serving(environ={"SIMKEY": key}, api_key_env="SIMKEY") as (_, url, s):
            no = await post(s, url + "/chat/completions", chat_body())
            wrong = await post(s, url + "/chat/completions", chat_body(), {"Authorization": "Bearer nope"})
            ok = await post(s, url + "/chat/completions", chat_body(), {"Authorization": f"Bearer {key}"})
            async with s.get(url + "/models") as r:
                models = r.status
        return no, wrong, ok, models

    no, wrong, ok, models = asyncio.run(main())
    assert (no[0], wrong[0], ok[0], models) == (401, 401, 200, 401)
    assert key not in no[2] + wrong[2] + ok[2]
    with pytest.raises(ValueError, match="SIMKEY"):
        SimServer(SimServerConfig(api_key_env="SIMKEY"), {})


def test_config_is_checked():
    for bad in ({"tokens": (5, 2)}, {"error_rate": 0.7, "timeout_rate": 0.5}, {"replicas": 0}, {"ttft_s": -1}):
        with pytest.raises(ValueError):
            SimServerConfig(**bad).check()


def test_cli_serves_and_stops_cleanly():
    key = "sk-cli-" + secrets.token_hex(8)
    env = {**os.environ, "MXKEY": key}
    srv = SimServerProcess(["--replicas", "2", "--max-concurrency", "3", "--tokens", "4..4", "--ttft", "2ms",
                            "--per-token", "0", "--model", "tiny", "--api-key-env", "MXKEY"], env=env).start()
    try:
        assert "replicas 2 x 3" in srv.banner

        async def main():
            async with aiohttp.ClientSession() as s:
                h = {"Authorization": f"Bearer {key}"}
                r1 = await post(s, srv.url + "/chat/completions", chat_body(), h)
                r2 = await post(s, srv.url + "/chat/completions", chat_body())
                return r1, r2

        r1, r2 = asyncio.run(main())
        assert r1[0] == 200 and json.loads(r1[2])["usage"]["completion_tokens"] == 4
        assert r2[0] == 401
        m = srv.metrics()
        assert m["mx_sim_capacity"] == 6
        assert m['mx_sim_requests_total{route="/v1/chat/completions",code="401"}'] == 1
    finally:
        err = srv.stop()
    assert key not in err and "Traceback" not in err


def test_cli_rejects_bad_options():
    p = subprocess.run([sys.executable, "-m", "matrixlang", "sim-server", "--port", "0", "--tokens", "9..2"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "tokens" in p.stderr
    assert (duration("250ms"), duration("1.5s"), duration("2m"), duration("0.25")) == (0.25, 1.5, 120.0, 0.25)
    for bad in ("fast", "3 parsecs", "-1s"):
        with pytest.raises(ValueError):
            duration(bad)
    assert token_range("200..800") == (200, 800)
