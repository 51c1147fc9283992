"""The openai backend client against real sim servers on 127.0.0.1 (in-process aiohttp servers, and
`mxc sim-server` subprocesses where a server has to die)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
import secrets
import socket
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from matrixlang.runtime.backends.endpoints import EndpointPool, display_url
from matrixlang.runtime.backends.openai_client import (
    EncodedTexts,
    ModelCallError,
    OpenAIClient,
    OpenAIModel,
    close_shared_session,
    encode_body,
    parse_retry_after,
    resolve_model,
    resolve_models,
    resolve_urls,
)
from matrixlang.runtime.backends.simmodel import filler_text
from matrixlang.runtime.backends.simserver import SimServer, SimServerConfig, SimServerProcess
from matrixlang.runtime.irtypes import EnvRef, ModelSpec
from matrixlang.runtime.semantics.engine import LLMCall

MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]


@contextlib.asynccontextmanager
async def servers(n: int = 1, environ: dict | None = None, **kw):
    kw = {"ttft_s": 0.0, "per_token_s": 0.0, **kw}
    srvs = [SimServer(SimServerConfig(port=0, **kw), environ) for _ in range(n)]
    for s in srvs:
        await s.start()
    try:
        yield srvs, [f"http://127.0.0.1:{s.port}/v1" for s in srvs]
    finally:
        for s in srvs:
            await s.stop()
        await close_shared_session()


def served(srv: SimServer, route: str = "/v1/chat/completions", code: int = 200) -> int:
    return srv.metrics.requests[(route, code)]


def dead_url() -> str:
    """A URL on which nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def spec(urls, **kw) -> OpenAIModel:
    kw = {"timeout_s": 10.0, "retries": 3, "backoff_s": 0.001, "max_backoff_s": 0.01, **kw}
    return OpenAIModel(model="llm", name="test-model", urls=list(urls), params={"max_tokens": 20}, **kw)


def test_chat_completion_and_streaming_give_the_servers_reply():
    async def main():
        async with servers(seed=3, tokens=(8, 20)) as (srvs, urls):
            c = OpenAIClient(spec(urls))
            r = await c.chat(MSGS)
            rs = await c.chat(MSGS, params={"max_tokens": 20, "stream": True})
            t = await c.completion("Once upon a time", params={"max_tokens": 6})
            ts = await c.completion("Once upon a time", params={"max_tokens": 6, "stream": True})
            return r, rs, t, ts, c.stats, srvs[0]

    r, rs, t, ts, st, srv = asyncio.run(main())
    assert 8 <= r.completion_tokens <= 20 and len(r.text.split()) == r.completion_tokens
    assert r.prompt_tokens == (len("You are terse.") + len("Say something.")) // 4
    assert (rs.text, rs.prompt_tokens, rs.completion_tokens) == (r.text, r.prompt_tokens, r.completion_tokens)
    assert t.completion_tokens == 6 and len(t.text.split()) == 6 and ts.text == t.text
    assert (st.calls, st.ok, st.attempts, st.retries) == (4, 4, 4, 0)
    assert served(srv) == 2 and served(srv, "/v1/completions") == 2


def test_sim_hints_reproduce_the_in_cluster_simulator():
    call = LLMCall("teacher", "llm", MSGS, {"max_tokens": 20}, "Hmm. Answer: B", 11, 7, "0:q-1:2")
    filler = LLMCall("teacher", "llm", MSGS, {"max_tokens": 20}, None, 5, 7, "0:q-2:0")

    async def main():
        async with servers(tokens=(50, 60)) as (_, urls):
            hinted = OpenAIClient(spec(urls, sim_hints=True))
            plain = OpenAIClient(spec(urls))
            unrendered = LLMCall("teacher", "llm", MSGS, {"max_tokens": 20}, None, 0, 7, "0:q-3:0")
            return (await hinted.call(call, "q-1"), await hinted.call(filler, "q-2"),
                    await plain.call(call, "q-1"), await hinted.call(unrendered, "q-3"))

    a, b, c, d = asyncio.run(main())
    assert d.completion_tokens == 20 and d.text      # nothing rendered: no hint, the server's own reply
    assert (a.text, a.prompt_tokens, a.completion_tokens) == ("Hmm. Answer: B", 7, 11)
    assert (b.text, b.completion_tokens) == (filler_text(5, "0:q-2:0"), 5)
    assert c.text != a.text and c.completion_tokens == 20      # no hints sent: the server's own reply


def test_retries_on_500_then_error_with_the_reason():
    async def main():
        async with servers(error_rate=1.0) as (srvs, urls):
            c = OpenAIClient(spec(urls, retries=3))
            with pytest.raises(ModelCallError) as ei:
                await c.chat(MSGS)
            return ei.value, c.stats, served(srvs[0], code=500)

    err, st, n500 = asyncio.run(main())
    assert n500 == 4 and err.attempts == 4 and st.attempts == 4 and st.retries == 3
    assert err.retryable and err.detail.startswith("4 attempts failed; last: HTTP 500")
    assert str(err) == f"model 'llm': {err.detail}" and pickle.loads(pickle.dumps(err)).detail == err.detail
    assert "injected error" in err.detail
    assert len(st.sleeps) == 3 and all(0 < s <= 0.01 for s in st.sleeps)   # backoff with jitter, capped


def test_partial_faults_every_call_ends_and_attempts_match_the_server():
    async def main():
        async with servers(seed=2, error_rate=0.35, throttle_rate=0.15, retry_after="0") as (srvs, urls):
            c = OpenAIClient(spec(urls, retries=2))
            res = await asyncio.gather(*(c.chat([{"role": "user", "content": f"q{i}"}], key=i) for i in range(60)),
                                       return_exceptions=True)
            srv = srvs[0]
            return res, c.stats, served(srv) + served(srv, code=500) + served(srv, code=429)

    res, st, server_seen = asyncio.run(main())
    ok = [r for r in res if not isinstance(r, BaseException)]
    errs = [r for r in res if isinstance(r, BaseException)]
    assert all(isinstance(e, ModelCallError) and e.attempts == 3 for e in errs)
    assert ok and errs                       # with these rates both outcomes occur
    assert st.attempts == server_seen        # every attempt reached the server, none invented
    assert st.ok == len(ok) and st.failed == len(errs)


def test_retry_after_is_honoured():
    async def main():
        async with servers(throttle_rate=1.0, retry_after="0") as (srvs, urls):
            # a backoff of 30 s would stall this test: the server's Retry-After: 0 must win (429s use
            # attempts here: no waiting for a rate limit to lift)
            c = OpenAIClient(spec(urls, retries=3, backoff_s=30.0, max_backoff_s=30.0, throttle_wait_s=0.0))
            with pytest.raises(ModelCallError) as ei:
                await c.chat(MSGS)
            return ei.value, c.stats, served(srvs[0], code=429), c.pool.snapshot()

    err, st, n429, snap = asyncio.run(main())
    assert n429 == 4 and st.retry_after == 3 and st.sleeps == [0.0, 0.0, 0.0]
    assert "HTTP 429" in err.detail
    assert snap[0]["state"] == "closed"      # throttling is not a health failure


def test_parse_retry_after():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(" 2 ") == 2.0 and parse_retry_after("0.25") == 0.25
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(7.0)
    assert parse_retry_after("-5") == 0.0 and parse_retry_after("99999") == 60.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_timeouts_are_retried_then_reported():
    async def main():
        async with servers(timeout_rate=1.0, timeout_hold_s=30) as (srvs, urls):
            c = OpenAIClient(spec(urls, retries=1, timeout_s=0.3))
            with pytest.raises(ModelCallError) as ei:
                await c.chat(MSGS)
            return ei.value, srvs[0].metrics.injected["timeout"]

    err, held = asyncio.run(main())
    assert held == 2 and err.attempts == 2 and "timeout" in err.detail


def test_a_cancelled_call_releases_its_endpoint():
    async def main():
        async with servers(timeout_rate=1.0, timeout_hold_s=30) as (srvs, urls):
            c = OpenAIClient(spec(urls, timeout_s=20.0))
            task = asyncio.ensure_future(c.chat(MSGS))
            while srvs[0].metrics.injected["timeout"] == 0:      # the request is held by the server
                await asyncio.sleep(0.01)
            busy = c.pool.snapshot()[0]["outstanding"]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return busy, c.pool.snapshot()[0]

    busy, ep = asyncio.run(main())
    assert busy == 1 and ep["outstanding"] == 0 and ep["state"] == "closed"


def test_client_errors_are_not_retried():
    async def main():
        async with servers() as (srvs, urls):
            c = OpenAIClient(spec(urls))
            with pytest.raises(ModelCallError) as ei:
                await c.chat([])                      # the server answers 400
            return ei.value, served(srvs[0], code=400), c.pool.snapshot()

    err, n400, snap = asyncio.run(main())
    assert n400 == 1 and err.attempts == 1 and not err.retryable
    assert "HTTP 400" in err.detail and "not retried" in err.detail and "messages" in err.detail
    assert snap[0]["state"] == "closed"


def test_breaker_opens_on_a_dead_endpoint_and_traffic_moves():
    dead = dead_url()

    async def main():
        async with servers() as (srvs, urls):
            c = OpenAIClient(spec([dead, urls[0]], cooldown_s=60.0))
            for i in range(30):        # sequential: the exact number of attempts at the dead one is known
                await c.chat([{"role": "user", "content": f"q{i}"}], key=f"row-{i}")
            return c.pool.snapshot(), c.stats, served(srvs[0])

    snap, st, live = asyncio.run(main())
    dead_ep, live_ep = snap
    assert dead_ep["state"] == "open" and dead_ep["opens"] == 1
    assert dead_ep["errors"] == dead_ep["requests"] == 3      # failure_threshold, then no more traffic
    assert live == 30 == live_ep["requests"] and st.ok == 30
    assert st.errors == {"connection error": 3}


def test_breaker_half_open_trial_and_growing_cooldown():
    # failure_threshold failures open the breaker; after the cooldown one trial request is let through
    pool = EndpointPool(["http://a/v1", "http://b/v1"], failure_threshold=2, cooldown_s=5.0, max_cooldown_s=20.0,
                        clock=lambda: t[0])
    t = [100.0]
    a, b = pool.endpoints
    for _ in range(2):
        pool.begin(a)
        pool.end(a, False)
    assert a.state(t[0]) == "open" and pool.pick(avoid=()) is b
    assert pool.pick(key="x") is b                 # even a key whose home is a
    t[0] += 5.0
    assert a.state(t[0]) == "half_open"
    pool.begin(a)                                  # the trial
    assert a.state(t[0]) == "open" and pool.healthy() == [b]   # one trial at a time
    pool.end(a, False)                             # trial failed: reopen for twice as long
    assert a.cooldown == 10.0 and a.state(t[0] + 9.9) == "open" and a.state(t[0] + 10.0) == "half_open"
    t[0] += 10.0
    pool.begin(a)
    pool.end(a, True)                              # trial succeeded: closed
    assert a.state(t[0]) == "closed" and a.failures == 0 and pool.healthy() == [a, b]
    pool.begin(a)
    pool.end(a, None)                              # neutral (429): no effect on health
    assert a.state(t[0]) == "closed" and a.errors == 3


def test_least_outstanding_without_a_key():
    pool = EndpointPool(["http://a/v1", "http://b/v1", "http://c/v1"])
    a, b, c = pool.endpoints
    for _ in range(3):
        pool.begin(a)
    pool.begin(b)
    assert pool.pick() is c
    pool.begin(c)
    pool.begin(c)
    assert pool.pick() is b
    assert pool.pick(avoid=[b]) is c


def test_sticky_routing_by_row():
    async def main():
        async with servers(2) as (srvs, urls):
            c = OpenAIClient(spec(urls))
            homes = {k: c.pool.home(k).index for k in (f"row-{i}" for i in range(40))}
            for k in homes:
                for step in range(3):
                    await c.chat([{"role": "user", "content": f"{k} step {step}"}], key=k)
            return homes, [served(s) for s in srvs], urls

    homes, counts, urls = asyncio.run(main())
    expect = [3 * sum(1 for h in homes.values() if h == i) for i in range(2)]
    assert counts == expect and all(counts)        # every call at its row's home; both homes used
    # the home is a function of the key and the URL set, not of the list order or the process
    flipped = EndpointPool(list(reversed(urls)))
    assert all(flipped.home(k).url == urls[h] for k, h in homes.items())


def test_sticky_falls_back_when_the_home_is_unhealthy():
    dead = dead_url()

    async def main():
        async with servers() as (srvs, urls):
            c = OpenAIClient(spec([dead, urls[0]], cooldown_s=60.0))
            keys = [k for k in (f"r{i}" for i in range(200)) if c.pool.home(k).url == dead][:5]
            for k in keys:
                r = await c.chat([{"role": "user", "content": k}], key=k)
                assert r.text
            return len(keys), served(srvs[0]), c.pool.snapshot()

    n, live, snap = asyncio.run(main())
    assert n == 5 and live == 5 and snap[0]["errors"] == 3


def test_api_key_from_env_is_sent_as_bearer_and_never_shown(caplog):
    key = "sk-live-" + secrets.token_hex(12)
    env = {"SIM_KEY": key, "LLM_URL": ""}
    m = {"backend": "openai", "name": "x", "url": None, "api_key": {"env": "SIM_KEY", "default": None},
         "params": {"max_tokens": 5}, "timeout_s": None, "retries": 0, "sim": {"tokens": [1, 5]}}
    caplog.set_level(logging.DEBUG)

    async def main():
        async with servers(environ=env, api_key_env="SIM_KEY") as (_, urls):
            ok_spec = resolve_model(ModelSpec.from_ir("llm", {**m, "url": urls}), {"call_timeout_s": 5.0}, env)
            bad_spec = resolve_model(ModelSpec.from_ir("llm", {**m, "url": urls}), {"call_timeout_s": 5.0},
                                     {"SIM_KEY": "wrong"})
            none_spec = resolve_model(ModelSpec.from_ir("llm", {**m, "url": urls, "api_key": None}),
                                      {"call_timeout_s": 5.0}, {})
            ok = await OpenAIClient(ok_spec).chat(MSGS)
            errs = []
            for s in (bad_spec, none_spec):
                with pytest.raises(ModelCallError) as ei:
                    await OpenAIClient(s).chat(MSGS)
                errs.append(ei.value)
            client = OpenAIClient(ok_spec)
            # the probe is blocking (the driver runs it before its loop): off this loop, which serves
            probed = await asyncio.to_thread(resolve_models, {"models": {"llm": {**m, "url": urls}}}, env)
            return ok, errs, ok_spec, client, probed

    ok, errs, ok_spec, client, probed = asyncio.run(main())
    assert ok.completion_tokens > 0
    assert all("HTTP 401" in e.detail and e.attempts == 1 for e in errs)
    assert probed["llm"].sim_hints            # /v1/models probed with the key: an mxc sim-server
    shown = " ".join([repr(ok_spec), str(ok_spec.api_key), repr(client), str(client.snapshot()),
                      *(e.detail for e in errs), caplog.text])
    assert key not in shown
    assert pickle.loads(pickle.dumps(ok_spec)).api_key.value == key   # reaches the actors intact


def test_resolve_urls_and_display():
    env = {"LLM_URL": " http://a:1/v1, http://b:2 ,,https://c/v1/ "}
    assert resolve_urls(EnvRef("LLM_URL"), env, "m") == \
        ["http://a:1/v1", "http://b:2/v1", "https://c/v1"]
    assert resolve_urls(EnvRef("NOPE", "http://d:3/v1"), env, "m") == ["http://d:3/v1"]
    assert resolve_urls(("http://e:4/v1,http://f:5/v1",), env, "m") == ["http://e:4/v1", "http://f:5/v1"]
    with pytest.raises(ValueError, match=r"\$NOPE is not set"):
        resolve_urls(EnvRef("NOPE"), env, "m")
    with pytest.raises(ValueError, match="http"):
        resolve_urls(("ftp://x",), env, "m")
    assert display_url("http://user:pw@host:8/v1") == "http://host:8/v1"
    assert resolve_models({"models": {"s": {"backend": "sim", "sim": {"tokens": [1, 2]}}}}, env) == {}


def test_probe_of_an_unreachable_endpoint_gives_no_hints():
    m = {"backend": "openai", "name": "x", "url": [dead_url()], "api_key": None, "params": {},
         "sim": {"tokens": [1, 2]}}
    assert resolve_models({"models": {"llm": m}, "limits": {}}, {}, probe_timeout_s=1.0)["llm"].sim_hints is False


def test_a_server_killed_mid_run_is_taken_out_and_calls_still_succeed():
    a, b = SimServerProcess(["--ttft", "0", "--per-token", "0"]).start(), None
    try:
        b = SimServerProcess(["--ttft", "0", "--per-token", "0"]).start()

        async def main():
            c = OpenAIClient(spec([a.url, b.url], cooldown_s=60.0, retries=4))
            first = await asyncio.gather(*(c.chat([{"role": "user", "content": f"x{i}"}], key=i) for i in range(20)))
            a_before = a.metrics()['mx_sim_requests_total{route="/v1/chat/completions",code="200"}']
            a.stop()                               # the server dies with pooled connections open
            second = await asyncio.gather(*(c.chat([{"role": "user", "content": f"y{i}"}], key=i) for i in range(40)))
            await close_shared_session()
            return first, second, a_before, c.pool.snapshot(), c.stats

        first, second, a_before, snap, st = asyncio.run(main())
        assert len(first) == 20 and len(second) == 40 and all(r.text for r in first + second)
        assert a_before > 0                        # it did serve before it died
        assert snap[0]["state"] == "open" and snap[1]["state"] == "closed"
        b_count = b.metrics()['mx_sim_requests_total{route="/v1/chat/completions",code="200"}']
        assert b_count == 60 - a_before           # everything after the death went to the live server
        assert st.ok == 60 and st.failed == 0
    finally:
        a.stop()
        if b is not None:
            b.stop()


def test_an_outage_of_every_endpoint_is_waited_out_without_using_attempts():
    """Issue 11, break 8: the only server of a model dies for ~3 s mid-run. Calls made during the outage
    wait for it to come back (they used to burn their retries within a second and end as model_error);
    a server that never answered still fails fast."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["--ttft", "0", "--per-token", "0", "--port", str(port)]
    a = SimServerProcess(args).start()
    try:
        async def main():
            c = OpenAIClient(spec([a.url], retries=2, backoff_s=0.05, cooldown_s=0.5, outage_wait_s=30.0))
            await asyncio.gather(*(c.chat(MSGS, key=i) for i in range(10)))        # the service is up
            a.stop()
            loop = asyncio.get_running_loop()
            calls = [asyncio.ensure_future(c.chat([{"role": "user", "content": f"y{i}"}], key=i)) for i in range(30)]
            await asyncio.sleep(3.0)
            await loop.run_in_executor(None, a.start)                              # back on the same port
            replies = await asyncio.gather(*calls)
            await close_shared_session()
            return replies, c.stats

        replies, st = asyncio.run(main())
        assert len(replies) == 30 and all(r.text for r in replies)
        assert st.failed == 0 and st.outage_waits > 0 and st.outage_s >= 1.0
    finally:
        a.stop()

    async def never_up():
        c = OpenAIClient(spec([dead_url()], retries=2, backoff_s=0.01, outage_wait_s=30.0))
        try:
            with pytest.raises(ModelCallError, match="3 attempts failed"):
                await asyncio.wait_for(c.chat(MSGS), 10.0)
        finally:
            await close_shared_session()
        return c.stats

    assert asyncio.run(never_up()).outage_waits == 0


def _plain_body(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def test_the_request_body_is_json_dumps_byte_for_byte_with_texts_encoded_once():
    long = "He said \"no\" \\ then left.\n\tTabs, \x01 controls, caf\u00e9, \u6f22\u5b57, \U0001f600 " * 20
    other = "plain words " * 40
    history = [{"role": "assistant" if i % 2 else "user", "content": long if i % 3 else other + str(i)}
               for i in range(7)]
    bodies = [
        {"model": "m", "messages": [{"role": "system", "content": "short \u00e9"}, *history], "max_tokens": 20,
         "temperature": 0.5, "stop": ["\n", "END"], "mx_sim": {"text": None, "tokens": 12, "seed": "0:r:3"}},
        {"model": None, "messages": history[:3], "logit_bias": {"50256": -100}, "n": float("nan"),
         "stream": True, "stream_options": {"include_usage": True}},
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": long}]},
                                    {"role": "user", "content": long, "name": "\u00e9\"x"}, "not a dict", None]},
        {"model": "m", "messages": [{1: "int key"}, {"role": "user", "content": long}], 2: "int key"},
        {"model": "m", "messages": [{"content": long, "role": "user"}, {"role": ["odd"], "content": long},
                                    {"role": "tool", "content": long}, {"role": "user", "content": None}]},
        {"model": "m", "prompt": long, "messages": "not a list"},
        {"messages": []}, {},
    ]
    texts = EncodedTexts()
    for _ in range(2):                       # the second time, from the encoded texts
        for body in bodies:
            assert encode_body(body, texts) == _plain_body(body)
    assert set(texts) == {long, *(other + str(i) for i in (0, 3, 6))}   # the long texts only


def test_a_client_keeps_a_rows_encoded_texts_until_it_forgets_the_row():
    async def main():
        async with servers() as (_, urls):
            c = OpenAIClient(spec(urls, max_limit=2))
            history = [{"role": "user", "content": "word " * 100}]
            for key in ("r1", "r2", "r1"):
                reply = await c.chat(MSGS + history, key=key)
                history.append({"role": "assistant", "content": reply.text + " " + "more " * 60})
            assert c.rows_kept() == 2
            c.forget("r1")
            c.forget("r9")                   # never seen: nothing to drop
            assert c.rows_kept() == 1
            await c.chat(MSGS, key=None)     # no row: nothing kept
            assert c.rows_kept() == 1
            for i in range(5000):            # rows never forgotten: kept up to a bound, then dropped
                c._texts_of(f"x{i}")
            assert c.rows_kept() <= 4096

    asyncio.run(main())


def test_a_lone_surrogate_in_a_message_fails_as_json_dumps_does():
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 300 + "\ud800"}]}
    with pytest.raises(UnicodeEncodeError):
        _plain_body(body)
    with pytest.raises(UnicodeEncodeError):
        encode_body(body, EncodedTexts())
