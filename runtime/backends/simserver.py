"""``mxc sim-server``: the simulated LLM behind a real OpenAI-compatible HTTP server (aiohttp).

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with
``"stream": true`` as server-sent events), ``GET /health``, ``GET /metrics`` (Prometheus text).
Capacity and latency follow ``simmodel.SimCapacity``, the in-cluster simulator's model: ``replicas`` ×
``max_concurrency`` sequences decode at once, later requests queue FIFO, a reply of N tokens takes
``ttft + N * per_token * (1 + slowdown * active / max_concurrency)``. Every reply carries ``usage``
(a stream: in its last chunk before ``[DONE]``); prompt tokens are estimated as the runtime does
(characters of the messages / 4).

Reply text: a request with ``"mx_sim": {"text": str|null, "tokens": int, "seed": str}`` (sent by the
runtime's openai client to sim servers) gets exactly what the in-cluster simulator would give:
``simmodel.sim_reply(text, tokens, seed)``, ``tokens`` completion tokens. Any other request gets
filler text whose length is drawn from ``tokens`` (at most its ``max_tokens``), both deterministic in
``seed`` and the request's model and messages.

Fault injection, deterministic in ``seed``: the k-th arrival of a given request body draws
``u = Random(f"{seed}:{body digest}:{k}")``; ``u < error_rate`` answers 500, the next
``timeout_rate`` holds the request for ``timeout_hold_s`` (clients time out), the next
``throttle_rate`` answers 429 with ``Retry-After: retry_after``. With ``api_key_env`` set the server
demands ``Authorization: Bearer $KEY`` (401 otherwise). The server logs no request and no header.

Rate limits (off unless set), checked before anything else as a hosted API's gateway does:
``max_concurrent`` requests being served at once (more get 429 at once, no ``Retry-After``);
``rate_limit_rps`` requests per second and ``rate_limit_tpm`` tokens per minute (prompt + completion
tokens of the request, as OpenAI counts them), token buckets holding ``rate_limit_burst_s`` seconds of
budget (``ratelimit.TokenBucket``). A refused request gets 429, an OpenAI-shaped error body
(``code: "rate_limit_exceeded"``), ``Retry-After`` (seconds, fractional) and ``retry-after-ms`` saying
when it would be admitted; refused requests take nothing from the budget. ``/metrics`` counts them by
limit (``mx_sim_rate_limited_total``) and counts the requests that arrived while a ``Retry-After`` the
server had sent was still running, more than ``EARLY_GRACE_S`` after it was sent
(``mx_sim_early_requests_total``: a single client that honours ``Retry-After`` for its endpoint, not
just for the refused call, sends none).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .ratelimit import TokenBucket, admit
from .simmodel import SimCapacity, filler_text, sim_reply

OWNER = "matrixlang-sim"
MAX_STREAM_CHUNKS = 16
EARLY_GRACE_S = 0.25      # a request this soon after a 429 may have been sent before the client read it
_WORDS = re.compile(r"\s*\S+\s*|\s+")


@dataclass(slots=True)
class SimServerConfig:
    """Settings of one sim server (the ``mxc sim-server`` options)."""

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    max_concurrency: int = 64
    tokens: tuple[int, int] = (16, 64)
    ttft_s: float = 0.01
    per_token_s: float = 0.0005
    slowdown: float = 0.5
    seed: int = 0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: str = "0"                 # the Retry-After header of a 429
    timeout_hold_s: float = 600.0
    models: tuple[str, ...] = ("mx-sim",)  # listed by /v1/models; requests may name any model
    api_key_env: str | None = None
    rate_limit_rps: float = 0.0            # requests per second (0: no limit)
    rate_limit_tpm: float = 0.0            # prompt + completion tokens per minute (0: no limit)
    rate_limit_burst_s: float = 1.0        # the buckets hold this many seconds of budget
    max_concurrent: int = 0                # requests served at once, more get 429 (0: no limit)

    def check(self) -> None:
        """ValueError when a setting is out of range."""
        lo, hi = self.tokens
        if lo < 0 or hi < lo:
            raise ValueError(f"tokens must be A..B with 0 <= A <= B, got {lo}..{hi}")
        rates = (self.error_rate, self.timeout_rate, self.throttle_rate)
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0:
            raise ValueError("error, timeout and throttle rates must be in [0, 1] and sum to at most 1")
        if self.replicas < 1 or self.max_concurrency < 1:
            raise ValueError("replicas and max-concurrency must be at least 1")
        if self.ttft_s < 0 or self.per_token_s < 0 or self.timeout_hold_s < 0:
            raise ValueError("ttft, per-token and timeout hold must be >= 0")
        if not self.models:
            raise ValueError("at least one model name")
        if not all(math.isfinite(x) for x in (self.rate_limit_rps, self.rate_limit_tpm, self.rate_limit_burst_s)):
            raise ValueError("rate limits and their burst must be finite numbers")
        if self.rate_limit_rps < 0 or self.rate_limit_tpm < 0 or self.max_concurrent < 0:
            raise ValueError("rate limits and max-concurrent must be >= 0 (0: no limit)")
        if self.rate_limit_burst_s <= 0:
            raise ValueError("the rate-limit burst must be > 0 seconds")
        if (self.rate_limit_rps and self.rate_limit_rps * self.rate_limit_burst_s < 1
                or self.rate_limit_tpm and self.rate_limit_tpm / 60 * self.rate_limit_burst_s < 1):
            raise ValueError("a rate limit's burst must hold at least one request/token: raise --rate-limit-burst")


@dataclass(slots=True)
class _Metrics:
    requests: Counter = field(default_factory=Counter)       # (route, HTTP status) -> count
    prompt_tokens: int = 0
    completion_tokens: int = 0
    injected: Counter = field(default_factory=Counter)       # error / timeout / throttle
    busy_s: float = 0.0
    peak_active: int = 0
    peak_queued: int = 0
    limited: Counter = field(default_factory=Counter)        # 429s of the rate limits: rps / tpm / concurrency
    early: int = 0                                           # requests inside a Retry-After the server sent


class BadRequest(Exception):
    """The request body is not a valid completion request (400)."""


class SimServer:
    """The server; ``await start()`` binds it (port 0: any free port, see ``port``), ``await stop()``."""

    def __init__(self, cfg: SimServerConfig, environ: dict[str, str] | None = None) -> None:
        cfg.check()
        self.cfg = cfg
        env = os.environ if environ is None else environ
        key = env.get(cfg.api_key_env) if cfg.api_key_env else None
        if cfg.api_key_env and not key:
            raise ValueError(f"${cfg.api_key_env} is empty or not set (--api-key-env)")
        self._auth = f"Bearer {key}".encode() if key else None
        self.cap = SimCapacity(cfg.replicas, cfg.max_concurrency, cfg.ttft_s, cfg.per_token_s, cfg.slowdown)
        self.metrics = _Metrics()
        self._seen: dict[bytes, int] = {}
        self._next_id = 0
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.started = time.time()
        self.rps = (TokenBucket(cfg.rate_limit_rps, cfg.rate_limit_rps * cfg.rate_limit_burst_s)
                    if cfg.rate_limit_rps else None)
        self.tpm = (TokenBucket(cfg.rate_limit_tpm / 60, cfg.rate_limit_tpm / 60 * cfg.rate_limit_burst_s)
                    if cfg.rate_limit_tpm else None)
        self.serving = 0                       # requests admitted and not yet answered
        self._hold = (0.0, 0.0)                # (from, until): the latest Retry-After the server sent

    # -- lifecycle ------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.prometheus)
        return app

    async def start(self) -> int:
        """Bind and serve; returns the port."""
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, backlog=4096)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.port = sock.getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- routes ---------------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._deny("/v1/models")
        self.metrics.requests[("/v1/models", 200)] += 1
        data = [{"id": m, "object": "model", "created": int(self.started), "owned_by": OWNER}
                for m in self.cfg.models]
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "/v1/chat/completions", chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "/v1/completions", chat=False)

    async def prometheus(self, request: web.Request) -> web.Response:
        m, cap = self.metrics, self.cap
        lines = ["# HELP mx_sim_requests_total Requests by route and HTTP status.",
                 "# TYPE mx_sim_requests_total counter"]
        for (route, code), n in sorted(m.requests.items()):
            lines.append(f'mx_sim_requests_total{{route="{route}",code="{code}"}} {n}')
        lines += ["# HELP mx_sim_injected_total Injected faults by kind.", "# TYPE mx_sim_injected_total counter"]
        for kind in ("error", "timeout", "throttle"):
            lines.append(f'mx_sim_injected_total{{kind="{kind}"}} {m.injected[kind]}')
        lines += ["# HELP mx_sim_rate_limited_total Requests refused (429) by a rate limit.",
                  "# TYPE mx_sim_rate_limited_total counter"]
        for kind in ("rps", "tpm", "concurrency"):
            lines.append(f'mx_sim_rate_limited_total{{limit="{kind}"}} {m.limited[kind]}')
        for name, kind, help_, value in (
            ("mx_sim_prompt_tokens_total", "counter", "Prompt tokens of served requests.", m.prompt_tokens),
            ("mx_sim_completion_tokens_total", "counter", "Completion tokens generated.", m.completion_tokens),
            ("mx_sim_busy_seconds_total", "counter", "Sequence-seconds decoded.", round(m.busy_s, 6)),
            ("mx_sim_active", "gauge", "Sequences decoding now.", cap.in_flight),
            ("mx_sim_queued", "gauge", "Requests waiting for a slot.", cap.queued),
            ("mx_sim_peak_active", "gauge", "Most sequences decoding at once.", m.peak_active),
            ("mx_sim_peak_queued", "gauge", "Most requests waiting at once.", m.peak_queued),
            ("mx_sim_capacity", "gauge", "replicas x max_concurrency.", cap.replicas * cap.max_concurrency),
            ("mx_sim_early_requests_total", "counter", "Requests that arrived while a Retry-After the server "
             f"sent was running (more than {EARLY_GRACE_S}s after it).", m.early),
            ("mx_sim_serving", "gauge", "Requests admitted and not yet answered.", self.serving),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += ["# HELP mx_sim_replica_served_total Requests admitted per replica.",
                  "# TYPE mx_sim_replica_served_total counter"]
        lines += [f'mx_sim_replica_served_total{{replica="{r}"}} {cap.served(r)}' for r in range(cap.replicas)]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Format": "0.0.4"})

    # -- serving one completion --------------------------------------------------------------------------
    async def _serve(self, request: web.Request, route: str, *, chat: bool) -> web.StreamResponse:
        m = self.metrics
        if not self._authorized(request):
            return self._deny(route)
        raw = await request.read()
        try:
            body = json.loads(raw)
            req = self._parse(body, chat)
        except (ValueError, BadRequest) as e:
            m.requests[(route, 400)] += 1
            return _error(400, f"invalid request: {e}", "invalid_request_error")
        self._arrival()
        reply = self._reply(req) if self.tpm is not None else None
        refused = self._rate_limit(req, reply)
        if refused is not None:
            m.requests[(route, 429)] += 1
            return refused
        self.serving += 1
        try:
            return await self._admitted(request, route, raw, req, reply, chat)
        finally:
            self.serving -= 1

    async def _admitted(self, request: web.Request, route: str, raw: bytes, req: dict,
                        reply: tuple[str, int, str] | None, chat: bool) -> web.StreamResponse:
        m = self.metrics
        fault = self._fault(raw)
        if fault == "error":
            m.requests[(route, 500)] += 1
            return _error(500, "injected error (--error-rate)", "server_error")
        if fault == "throttle":
            m.requests[(route, 429)] += 1
            with contextlib.suppress(ValueError):
                self._held(float(self.cfg.retry_after))
            return _error(429, "injected throttling (--throttle-rate)", "rate_limit_error",
                          {"Retry-After": self.cfg.retry_after})
        if fault == "timeout":
            await asyncio.sleep(self.cfg.timeout_hold_s)    # the client gives up first (or waits long)
        text, tokens, finish = reply if reply is not None else self._reply(req)
        replica = await self._acquire()
        try:
            duration = self.cap.duration(tokens, self.cap.active(replica))
            m.busy_s += duration
            m.peak_active = max(m.peak_active, self.cap.in_flight)
            usage = {"prompt_tokens": req["prompt_tokens"], "completion_tokens": tokens,
                     "total_tokens": req["prompt_tokens"] + tokens}
            self._next_id += 1
            rid = f"{'chatcmpl' if chat else 'cmpl'}-mx{self._next_id}"
            if req["stream"]:
                resp = await self._stream(request, rid, req, text, finish, usage, duration, chat)
            else:
                if duration > 0:
                    await asyncio.sleep(duration)
                choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                resp = web.json_response({
                    "id": rid, "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()), "model": req["model"], "choices": [choice], "usage": usage})
        finally:
            self._wake(self.cap.release(replica))
        m.requests[(route, 200)] += 1
        m.prompt_tokens += req["prompt_tokens"]
        m.completion_tokens += tokens
        return resp

    async def _stream(self, request: web.Request, rid: str, req: dict, text: str, finish: str, usage: dict,
                      duration: float, chat: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        created, model = int(time.time()), req["model"]
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(piece: str | None, fin: str | None, first: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
                if piece is not None:
                    delta["content"] = piece
                ch: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": fin, "logprobs": None}
            else:
                ch = {"index": 0, "text": piece or "", "finish_reason": fin, "logprobs": None}
            d = {"id": rid, "object": obj, "created": created, "model": model, "choices": [ch]}
            return b"data: " + json.dumps(d, ensure_ascii=False).encode() + b"\n\n"

        pieces = _split(text, MAX_STREAM_CHUNKS)
        ttft = min(self.cfg.ttft_s, duration)
        if ttft > 0:
            await asyncio.sleep(ttft)
        if chat:
            await resp.write(chunk(None, None, first=True))
        step = (duration - ttft) / max(1, len(pieces))
        for i, piece in enumerate(pieces):
            if step > 0:
                await asyncio.sleep(step)
            await resp.write(chunk(piece, finish if i == len(pieces) - 1 else None))
        if not pieces:
            await resp.write(chunk("" if not chat else None, finish))
        tail = {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage}
        await resp.write(b"data: " + json.dumps(tail).encode() + b"\n\ndata: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _parse(self, body: Any, chat: bool) -> dict:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(isinstance(x, dict) for x in msgs):
                raise BadRequest("'messages' must be a non-empty list of objects")
            chars = sum(_content_len(x.get("content")) for x in msgs)
            basis = msgs
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list):
                prompt = "".join(p for p in prompt if isinstance(p, str))
            if not isinstance(prompt, str):
                raise BadRequest("'prompt' must be a string")
            chars, basis = len(prompt), prompt
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                       or max_tokens < 0):
            raise BadRequest("'max_tokens' must be a non-negative integer")
        hint = body.get("mx_sim")
        if hint is not None:
            if not isinstance(hint, dict):
                raise BadRequest("'mx_sim' must be an object")
            t, n, s = hint.get("text"), hint.get("tokens"), hint.get("seed")
            if t is not None and not isinstance(t, str):
                raise BadRequest("'mx_sim.text' must be a string or null")
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise BadRequest("'mx_sim.tokens' must be a non-negative integer")
            if not isinstance(s, str):
                raise BadRequest("'mx_sim.seed' must be a string")
        model = body.get("model")
        return {"model": model if isinstance(model, str) else self.cfg.models[0], "chat": chat,
                "basis": basis, "max_tokens": max_tokens, "hint": hint, "stream": bool(body.get("stream")),
                "prompt_tokens": max(1, chars // 4)}

    def _reply(self, req: dict) -> tuple[str, int, str]:
        """(text, completion tokens, finish reason) of a parsed request."""
        hint = req["hint"]
        if hint is not None:
            tokens = hint["tokens"]
            return sim_reply(hint.get("text"), tokens, hint["seed"]), tokens, "stop"
        basis = json.dumps([req["model"], req["basis"]], sort_keys=True, ensure_ascii=False)
        key = f"{self.cfg.seed}:{hashlib.blake2b(basis.encode(), digest_size=8).hexdigest()}"
        lo, hi = self.cfg.tokens
        cap = req["max_tokens"]
        if cap is not None:
            lo, hi = min(lo, cap), min(hi, cap)
        tokens = random.Random(key).randint(lo, hi)
        finish = "length" if cap is not None and tokens >= cap else "stop"
        return filler_text(tokens, key), tokens, finish

    def _rate_limit(self, req: dict, reply: tuple[str, int, str] | None) -> web.Response | None:
        """The 429 of a request over a rate limit, else None (the request is admitted and counted)."""
        c, m = self.cfg, self.metrics
        if c.max_concurrent and self.serving >= c.max_concurrent:
            m.limited["concurrency"] += 1
            return _rate_error(f"Too many concurrent requests (limit {c.max_concurrent})", None)
        buckets: list[tuple[TokenBucket, float]] = []
        if self.rps is not None:
            buckets.append((self.rps, 1.0))
        if self.tpm is not None:
            buckets.append((self.tpm, req["prompt_tokens"] + (reply[1] if reply else 0)))
        if not buckets:
            return None
        wait = admit(buckets)
        if wait == 0.0:
            return None
        kind = "rps" if self.rps is not None and self.rps.wait(1.0) > 0 else "tpm"
        m.limited[kind] += 1
        what = (f"requests per second (limit {c.rate_limit_rps:g}/s)" if kind == "rps"
                else f"tokens per minute (limit {c.rate_limit_tpm:g}/min)")
        self._held(wait)
        return _rate_error(f"Rate limit reached for {what}. Please try again in {wait:.3f}s.", wait)

    def _held(self, wait: float) -> None:
        """A 429 with ``Retry-After: wait`` is sent now."""
        now = time.monotonic()
        if now + wait > self._hold[1]:
            self._hold = (now + EARLY_GRACE_S, now + wait)

    def _arrival(self) -> None:
        start, until = self._hold
        if start <= time.monotonic() < until:
            self.metrics.early += 1

    def _fault(self, raw: bytes) -> str | None:
        c = self.cfg
        if not (c.error_rate or c.timeout_rate or c.throttle_rate):
            return None
        digest = hashlib.blake2b(raw, digest_size=12).digest()
        k = self._seen.get(digest, 0)
        if len(self._seen) > 1_000_000:
            self._seen.clear()
        self._seen[digest] = k + 1
        u = random.Random(f"{c.seed}:{digest.hex()}:{k}").random()
        for kind, rate in (("error", c.error_rate), ("timeout", c.timeout_rate), ("throttle", c.throttle_rate)):
            if u < rate:
                self.metrics.injected[kind] += 1
                return kind
            u -= rate
        return None

    async def _acquire(self) -> int:
        """A decode slot (the pattern of simmodel's docstring): at once, or FIFO behind queued requests."""
        cap = self.cap
        fut = asyncio.get_running_loop().create_future()
        replica = cap.acquire(fut)
        if replica is not None:
            return replica
        self.metrics.peak_queued = max(self.metrics.peak_queued, cap.queued)
        try:
            return await fut
        except asyncio.CancelledError:
            if not cap.cancel(fut) and fut.done() and not fut.cancelled():
                self._wake(cap.release(fut.result()))
            raise

    def _wake(self, grants: list) -> None:
        for fut, r in grants:
            if fut.cancelled():
                self._wake(self.cap.release(r))
            else:
                fut.set_result(r)

    def _authorized(self, request: web.Request) -> bool:
        if self._auth is None:
            return True
        got = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(got, self._auth)

    def _deny(self, route: str) -> web.Response:
        self.metrics.requests[(route, 401)] += 1
        return _error(401, "missing or invalid API key", "authentication_error")


def _error(status: int, message: str, kind: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status,
                             headers=headers)


def _rate_error(message: str, wait: float | None) -> web.Response:
    """429 as OpenAI sends it, with ``Retry-After`` (fractional seconds) and ``retry-after-ms``."""
    headers = None
    if wait is not None:
        wait = max(wait, 0.001)
        headers = {"Retry-After": f"{wait:.3f}", "retry-after-ms": str(math.ceil(wait * 1000))}
    return web.json_response({"error": {"message": message, "type": "requests", "param": None,
                                        "code": "rate_limit_exceeded"}}, status=429, headers=headers)


def _content_len(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):   # content parts
        return sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return 0


def _split(text: str, n: int) -> list[str]:
    """``text`` in at most ``n`` consecutive pieces at word boundaries (joined, they give ``text``)."""
    words = _WORDS.findall(text)
    if not words:
        return [text] if text else []
    per = -(-len(words) // n)
    return ["".join(words[i:i + per]) for i in range(0, len(words), per)]


async def serve_forever(cfg: SimServerConfig, ready=None) -> None:
    """Run a server until cancelled; ``ready(server)`` is called once it listens."""
    server = SimServer(cfg)
    await server.start()
    try:
        if ready is not None:
            ready(server)
        await asyncio.Event().wait()
    finally:
        await server.stop()


class SimServerProcess:
    """``mxc sim-server`` in a subprocess on 127.0.0.1 (tests, benchmarks): ``url`` once started.

    ``with SimServerProcess(["--seed", "3"]) as srv: ...`` starts it on a free port and stops it after."""

    def __init__(self, args: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None,
                 start_timeout_s: float = 60.0) -> None:
        self.args, self.env, self.start_timeout_s = list(args), env, start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.banner = ""

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> SimServerProcess:
        cmd = [sys.executable, "-m", "matrixlang", "sim-server", "--host", "127.0.0.1", "--port", "0", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=self.env)
        line = self.proc.stdout.readline()   # type: ignore[union-attr]
        m = re.search(r"listening on http://[^:]+:(\d+)/v1", line)
        if not m:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=self.start_timeout_s)
            raise RuntimeError(f"mxc sim-server did not start: {line.strip()} {err.strip()}")
        self.banner, self.port = line.strip(), int(m.group(1))
        return self

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{"name{labels}": value}``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def stop(self) -> str:
        """Stop the server (SIGTERM, then SIGKILL); returns what it wrote to stderr."""
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.proc = None
        return err or ""

    def __enter__(self) -> SimServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
