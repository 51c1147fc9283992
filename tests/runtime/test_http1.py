"""The openai backend's lean HTTP/1.1 client (runtime/backends/http1.py): its reply parser fed in every
split, and OpenAIClient calls against raw asyncio servers on 127.0.0.1 that answer as a test says
(chunked, event streams, bodies ended by close, idle connections closed, stalls, resets), counting
connections and requests server-side."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
from matrixlang.runtime.backends import http1, openai_client
from matrixlang.runtime.backends.openai_client import (
    ModelCallError,
    OpenAIClient,
    OpenAIModel,
    close_shared_session,
)

MSGS = [{"role": "user", "content": "Say something."}]


def reply_json(text: str = "hi", usage: dict | None = None) -> bytes:
    d: dict = {"choices": [{"message": {"content": text}, "text": text}]}
    if usage is not None:
        d["usage"] = usage
    return json.dumps(d).encode()


def head(status: int = 200, ctype: str = "application/json", **headers: str | int) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {ctype}",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def with_length(body: bytes, status: int = 200, ctype: str = "application/json", **headers) -> bytes:
    return head(status, ctype, Content_Length=len(body), **headers) + body


def chunked(pieces: list[bytes], trailer: bytes = b"") -> list[bytes]:
    out = [b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces if p]
    return [*out, b"0\r\n" + trailer + b"\r\n"]


def sse(texts: list[str], usage: dict | None = None, done: bool = True) -> bytes:
    events = [{"choices": [{"delta": {"content": t}}]} for t in texts]
    if usage is not None:
        events.append({"choices": [], "usage": usage})
    lines = [f"data: {json.dumps(e)}\n\n" for e in events] + (["data: [DONE]\n\n"] if done else [])
    return "".join(lines).encode()


class Req:
    def __init__(self, head: bytes, body: bytes, conn: int, nth: int) -> None:
        self.head, self.body, self.conn, self.nth = head, body, conn, nth   # nth: 1 for a connection's first


Action = bytes | float | str       # bytes: write; float: sleep; "close": FIN; "reset": RST; "stall": wait


class _ServerConn(asyncio.Protocol):
    def __init__(self, srv: RawServer) -> None:
        self.srv, self.buf, self.busy, self.n = srv, b"", False, 0
        self.no = srv.conns = srv.conns + 1

    def connection_made(self, transport) -> None:
        self.t = transport
        self.srv.open += 1
        self.srv.max_open = max(self.srv.max_open, self.srv.open)

    def connection_lost(self, exc) -> None:
        self.srv.open -= 1

    def data_received(self, data: bytes) -> None:
        if self.busy:                       # a request before the last one's reply: pipelined
            self.srv.pipelined += 1
        self.buf += data
        self._next()

    def _next(self) -> None:
        i = self.buf.find(b"\r\n\r\n")
        if i < 0 or self.busy:
            return
        h = self.buf[:i]
        n = next((int(line.split(b":")[1]) for line in h.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
        if len(self.buf) < i + 4 + n:
            return
        body, self.buf = self.buf[i + 4:i + 4 + n], self.buf[i + 4 + n:]
        self.busy, self.n = True, self.n + 1
        self.srv.requests += 1
        self.srv.heads.append(h)
        asyncio.ensure_future(self._answer(Req(h, body, self.no, self.n)))

    async def _answer(self, req: Req) -> None:
        for a in await self.srv.handler(req):
            if isinstance(a, bytes):
                self.t.write(a)
            elif isinstance(a, float):
                await asyncio.sleep(a)
            elif a == "close":
                self.t.close()
                return
            elif a == "reset":
                self.t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.t.abort()
                return
            elif a == "stall":
                await asyncio.sleep(3600)
        self.srv.answered += 1
        self.busy = False
        self._next()


class RawServer:
    """Counts connections (``conns`` ever, ``open`` now, ``max_open``), ``requests`` read, ``answered``
    and ``pipelined`` (bytes of a request that came before the previous reply was done)."""

    def __init__(self, handler: Callable[[Req], Awaitable[list[Action]]]) -> None:
        self.handler = handler
        self.conns = self.open = self.max_open = self.requests = self.answered = self.pipelined = 0
        self.heads: list[bytes] = []

    async def __aenter__(self) -> RawServer:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _ServerConn(self), "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc) -> None:
        await close_shared_session()
        self.server.close()


def serve(fn: Callable[[Req], list[Action]]) -> RawServer:
    async def handler(req: Req) -> list[Action]:
        return fn(req)
    return RawServer(handler)


def client(url: str, **kw) -> OpenAIClient:
    kw = {"timeout_s": 5.0, "retries": 0, "backoff_s": 0.001, "max_backoff_s": 0.01, **kw}
    return OpenAIClient(OpenAIModel(model="llm", name="m", urls=[url], params={"max_tokens": 5}, **kw), environ={})


async def calls(c: OpenAIClient, n: int, **kw) -> list:
    return await asyncio.gather(*(c.chat([{"role": "user", "content": f"q{i}"}], key=i, **kw) for i in range(n)))


# ---- the parser, fed in every split -----------------------------------------------------------------

class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out, self.closing = b"", False

    def write(self, data) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


def _feed(reply: bytes, cuts: list[int]) -> tuple[http1.Response, bytes]:
    """The Response (and its body) a connection parses from ``reply`` cut at ``cuts``."""
    async def main():
        pool = http1.Pool(2)
        conn = http1._Conn(pool, ("http", "h", 1))
        conn.connection_made(_Transport())
        fut = conn.send(b"POST / HTTP/1.1\r\n\r\n")
        bounds = [0, *cuts, len(reply)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            if b > a:
                conn.data_received(reply[a:b])
        resp = await asyncio.wait_for(fut, 2.0)     # an incomplete parse fails, not hangs
        body = b"".join([line async for line in resp.content]) if resp.streaming else await resp.read()
        assert conn._state == http1._IDLE and resp.keep
        return resp, body
    return asyncio.run(main())


REPLIES = {
    "length": (with_length(b'{"a": 1}', X_Extra="y"), b'{"a": 1}'),
    "chunked": (head(Transfer_Encoding="chunked") + b"".join(chunked([b'{"a":', b" 1", b"}"], b"X-T: 1\r\n")),
                b'{"a": 1}'),
    "sse": (head(ctype="text/event-stream", Transfer_Encoding="chunked") + b"".join(chunked(
        [sse(["a"])[:7], sse(["a"])[7:]])), sse(["a"])),
    "continue": (b"HTTP/1.1 100 Continue\r\n\r\n" + with_length(b"ok"), b"ok"),
    "gzip": (with_length(gzip.compress(b"zipped" * 50), Content_Encoding="gzip"), b"zipped" * 50),
    "no content": (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
}


@pytest.mark.parametrize("name", list(REPLIES))
def test_the_parser_reads_a_reply_however_it_is_cut(name):
    reply, body = REPLIES[name]
    cuts = [[], list(range(1, len(reply))), [len(reply) // 3, len(reply) // 2], [reply.index(b"\r\n\r\n") + 2]]
    for c in cuts:
        resp, got = _feed(reply, c)
        assert got == body, (name, c)
    assert resp.status == (204 if name == "no content" else 200)
    if name == "length":
        assert resp.headers.get("X-EXTRA") == "y" and "x-extra" in resp.headers and resp.headers["X-Extra"] == "y"


# ---- through OpenAIClient, against raw servers -----------------------------------------------------

def test_content_length_replies_reuse_one_connection():
    async def main():
        async with serve(lambda r: [with_length(reply_json(f"r{r.nth}", {"prompt_tokens": 3,
                                                                          "completion_tokens": 2}))]) as srv:
            c = client(srv.url)
            got = [await c.chat(MSGS) for _ in range(5)]
            return got, srv, c
    got, srv, c = asyncio.run(main())
    assert [r.text for r in got] == ["r1", "r2", "r3", "r4", "r5"] and got[0].completion_tokens == 2
    assert srv.conns == 1 and srv.requests == 5 and c.http == "lean"
    h = srv.heads[0].decode()
    assert h.startswith("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:") and "Content-Length: " in h


def test_chunked_replies_in_pieces():
    body = reply_json("chunked reply", {"prompt_tokens": 1, "completion_tokens": 9})

    async def main():
        async with serve(lambda r: [head(Transfer_Encoding="chunked"), 0.01,
                                    *[x for p in chunked([body[:10], body[10:30], body[30:]], b"X-Trailer: t\r\n")
                                      for x in (p, 0.005)]]) as srv:
            c = client(srv.url)
            return [await c.chat(MSGS) for _ in range(3)], srv
    got, srv = asyncio.run(main())
    assert all(r.text == "chunked reply" and r.completion_tokens == 9 for r in got)
    assert srv.conns == 1                                  # read to its end: the connection is reused


def test_chunked_event_streams_and_their_errors():
    stream = sse(["Hel", "lo", " there"], {"prompt_tokens": 4, "completion_tokens": 3})
    cases = {"ok": stream, "no done": sse(["x"], done=False),
             "error": b'data: {"error": {"message": "model overloaded"}}\n\n'}

    def answer(r: Req) -> list[Action]:
        data = cases[json.loads(r.body)["messages"][0]["content"]]
        return [head(ctype="text/event-stream; charset=utf-8", Transfer_Encoding="chunked"),
                *[x for p in chunked([data[i:i + 13] for i in range(0, len(data), 13)]) for x in (p, 0.002)]]

    async def main():
        async with serve(answer) as srv:
            c = client(srv.url)
            ok = await c.chat([{"role": "user", "content": "ok"}], params={"stream": True})
            errs = []
            for case in ("no done", "error"):
                with pytest.raises(ModelCallError) as ei:
                    await c.chat([{"role": "user", "content": case}], params={"stream": True})
                errs.append(ei.value.detail)
            return ok, errs, srv
    ok, errs, srv = asyncio.run(main())
    assert (ok.text, ok.prompt_tokens, ok.completion_tokens) == ("Hello there", 4, 3)
    assert "bad reply: the stream ended without data: [DONE]" in errs[0]
    assert "bad reply: error in stream: model overloaded" in errs[1]
    assert b'"stream":true' in srv.heads[0] or srv.requests == 3


def test_a_body_ended_by_close_and_connection_close_are_not_reused():
    def answer(r: Req) -> list[Action]:
        body = reply_json(f"r{r.conn}")
        if json.loads(r.body)["messages"][0]["content"] == "eof":
            return [b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n", body[:5], 0.01, body[5:], "close"]
        return [with_length(body, Connection="close")]     # and keeps the connection open

    async def main():
        async with serve(answer) as srv:
            c = client(srv.url)
            got = [await c.chat([{"role": "user", "content": m}]) for m in ("eof", "eof", "cc", "cc")]
            return got, srv
    got, srv = asyncio.run(main())
    assert [r.text for r in got] == ["r1", "r2", "r3", "r4"] and srv.conns == 4


def test_a_stale_keep_alive_connection_is_replaced_once_and_the_call_counted_once():
    # the server drops every connection's second request unanswered, as one closing an idle connection
    # just when a request arrives: the client sends it again on a fresh connection, once
    async def main():
        async with serve(lambda r: ["close"] if r.nth > 1 else [with_length(reply_json(f"r{r.conn}"))]) as srv:
            c = client(srv.url)
            got = [await c.chat(MSGS) for _ in range(4)]
            return got, c.stats, srv
    got, st, srv = asyncio.run(main())
    assert [r.text for r in got] == ["r1", "r2", "r3", "r4"]
    assert (st.calls, st.ok, st.attempts, st.errors) == (4, 4, 4, {})
    assert srv.answered == 4 and srv.requests == 7 and srv.conns == 4


def test_a_fresh_connection_closed_without_reply_is_an_attempt_that_failed():
    async def main():
        async with serve(lambda r: ["close"]) as srv:
            c = client(srv.url, retries=2)
            with pytest.raises(ModelCallError) as ei:
                await c.chat(MSGS)
            return ei.value, c.stats, srv
    err, st, srv = asyncio.run(main())
    assert "connection error: ServerDisconnectedError: Server disconnected" in err.detail
    assert st.attempts == 3 == srv.requests                  # no hidden retries on fresh connections


def test_idle_connections_closed_by_the_server_are_dropped_from_the_pool():
    async def main():
        async with serve(lambda r: [with_length(reply_json("ok")), 0.02, "close"]) as srv:
            c = client(srv.url)
            for _ in range(3):
                await c.chat(MSGS)
                await asyncio.sleep(0.1)                 # the server has closed it meanwhile
            return c.stats, srv, http1.shared_pool(1).count
    st, srv, pooled = asyncio.run(main())
    assert st.attempts == 3 == srv.requests and srv.conns == 3 and pooled == 0


@pytest.mark.parametrize("how", ["no reply", "half a body"])
def test_a_stalled_server_times_out_and_the_connection_is_closed(how):
    async def main():
        start = [head(Content_Length=100), b"x" * 10] if how == "half a body" else []
        async with serve(lambda r: [*start, "stall"]) as srv:
            c = client(srv.url, timeout_s=0.3, retries=1)
            with pytest.raises(ModelCallError) as ei:
                await c.chat(MSGS)
            await asyncio.sleep(0.05)
            return ei.value, c.stats, srv, http1.shared_pool(1).count
    err, st, srv, pooled = asyncio.run(main())
    assert err.detail.startswith("2 attempts failed; last: timeout: no reply within 0.3s")
    assert srv.requests == 2 and srv.conns == 2 and srv.open == 0 and pooled == 0
    assert st.errors == {"timeout": 2}


@pytest.mark.parametrize("how", ["partial then reset", "reset"])
def test_a_reset_connection_fails_the_attempt_which_is_retried(how):
    def answer(r: Req) -> list[Action]:
        if r.conn == 1:
            return [head(Content_Length=100), b"x" * 10, 0.01, "reset"] if how != "reset" else ["reset"]
        return [with_length(reply_json("second"))]

    async def main():
        async with serve(answer) as srv:
            c = client(srv.url, retries=1)
            return await c.chat(MSGS), c.stats, srv
    r, st, srv = asyncio.run(main())
    assert r.text == "second" and st.attempts == 2 and srv.requests == 2
    assert st.errors == ({"broken reply": 1} if how != "reset" else {"connection error": 1})


def test_requests_are_never_pipelined_and_many_share_few_connections():
    async def main():
        async with serve(lambda r: [0.005, with_length(reply_json("x"))]) as srv:
            c = client(srv.url)
            sem = asyncio.Semaphore(20)

            async def one(i):
                async with sem:
                    return await c.chat([{"role": "user", "content": f"q{i}"}])
            got = await asyncio.gather(*(one(i) for i in range(400)))
            return got, srv
    got, srv = asyncio.run(main())
    assert len(got) == 400 and srv.requests == 400 and srv.pipelined == 0
    assert srv.conns <= 20 and srv.max_open <= 20          # one connection per call in flight, at most


def test_the_pool_limit_holds_and_excess_requests_wait(monkeypatch):
    monkeypatch.setattr(openai_client, "MAX_CONNECTIONS", 4)

    async def main():
        async with serve(lambda r: [0.01, with_length(reply_json("x"))]) as srv:
            c = client(srv.url)
            got = await calls(c, 40)
            return got, srv, c.stats
    got, srv, st = asyncio.run(main())
    assert len(got) == 40 and st.attempts == 40
    assert srv.max_open == 4 and srv.conns == 4 and srv.pipelined == 0


def test_error_statuses_and_retry_after_in_any_case():
    def answer(r: Req) -> list[Action]:
        if r.nth == 1:
            return [with_length(b'{"error": {"message": "slow down"}}', 429, RETRY_AFTER_MS="0")]
        if r.nth == 2:
            return [with_length(b"busy", 503, ctype="text/plain", retry_after="0")]
        if r.nth == 3:
            return [with_length(reply_json("ok"))]
        return [with_length(b'{"error": {"code": "insufficient_quota", "message": "no quota"}}', 429)]

    async def main():
        async with serve(answer) as srv:
            c = client(srv.url, retries=2, backoff_s=30.0, max_backoff_s=30.0)
            ok = await c.chat(MSGS)
            with pytest.raises(ModelCallError) as ei:
                await c.chat(MSGS)
            return ok, ei.value, c.stats
    ok, err, st = asyncio.run(main())
    assert ok.text == "ok" and st.retry_after == 2 and st.throttled == 2
    assert err.attempts == 1 and "HTTP 429: no quota" in err.detail and not err.retryable


def test_redirects_are_followed_by_aiohttp_as_before():
    # aiohttp's rules: 307/308 resend the POST with its body; 301/302/303 follow with a GET
    def answer(r: Req) -> list[Action]:
        line = r.head.split(b"\r\n")[0]
        if line.startswith(b"POST /v1/chat/completions"):
            return [with_length(b"", 307, Location="/v2/chat/completions")]
        if line.startswith(b"POST /v2/chat/completions") and json.loads(r.body)["messages"] == MSGS:
            return [with_length(reply_json("moved"))]
        if line.startswith(b"POST /v1/completions"):
            return [with_length(b"", 302, Location="/v2/completions")]
        return [with_length(b'{"error": "method"}', 405, Connection="close")]

    async def main():
        async with serve(answer) as srv:
            c = client(srv.url)
            r = await c.chat(MSGS)
            with pytest.raises(ModelCallError) as ei:
                await c.completion("x")
            return r, ei.value, srv
    r, err, srv = asyncio.run(main())
    assert r.text == "moved" and "HTTP 405" in err.detail
    # each redirect is sent again through aiohttp from the start (the origin sees it twice)
    assert [h.split(b"\r\n")[0].rsplit(b" ", 1)[0] for h in srv.heads] == [
        b"POST /v1/chat/completions", b"POST /v1/chat/completions", b"POST /v2/chat/completions",
        b"POST /v1/completions", b"POST /v1/completions", b"GET /v2/completions"]


def test_mx_http_client_aiohttp_and_https_urls_use_aiohttp():
    async def main():
        async with serve(lambda r: [with_length(reply_json("x"))]) as srv:
            c = OpenAIClient(OpenAIModel(model="llm", name="m", urls=[srv.url], retries=0),
                             environ={"MX_HTTP_CLIENT": "aiohttp"})
            r = await c.chat(MSGS)
            return r, c, asyncio.get_running_loop() in http1._pools, srv
    r, c, pooled, srv = asyncio.run(main())
    assert r.text == "x" and c.http == "aiohttp" and not pooled and c.snapshot()["http"] == "aiohttp"
    assert b"aiohttp" in srv.heads[0]                       # its User-Agent
    tls = OpenAIClient(OpenAIModel(model="llm", name="m", urls=["https://a/v1", "http://u:p@b/v1", "http://c/v1"]))
    assert tls.http == "lean" and [t is not None for t in tls._lean] == [False, False, True]


def test_closing_the_shared_session_closes_the_pools_connections():
    async def main():
        async with serve(lambda r: [with_length(reply_json("x"))]) as srv:
            c = client(srv.url)
            await calls(c, 8)
            before = srv.open
            await close_shared_session()
            await asyncio.sleep(0.05)
            return before, srv.open
    before, after = asyncio.run(main())
    assert before == 8 and after == 0


def test_connect_errors_read_as_aiohttps():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main():
        c = client(f"http://127.0.0.1:{port}/v1")
        try:
            with pytest.raises(ModelCallError) as ei:
                await c.chat(MSGS)
        finally:
            with contextlib.suppress(Exception):
                await close_shared_session()
        return ei.value
    err = asyncio.run(main())
    assert f"connection error: ClientConnectorError: Cannot connect to host 127.0.0.1:{port} ssl:default" in err.detail
