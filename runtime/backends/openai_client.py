"""The ``openai`` backend: an async client for OpenAI-compatible servers (vLLM, SGLang, hosted APIs,
``mxc sim-server``), built to keep the CPU per call small.

- Transport: ``http://`` endpoints through the lean HTTP/1.1 client of ``http1`` (one keep-alive
  connection pool per event loop, ``http1.shared_pool``); ``https://`` ones, URLs with credentials and
  redirects (a 3xx with a ``Location``: the request is sent again through aiohttp, which follows it as it
  always did) through one pooled ``aiohttp.ClientSession`` per process and event loop
  (``shared_session``); ``MX_HTTP_CLIENT=aiohttp`` sends every call through aiohttp. Both are shared
  by every model's client in an agent actor, up to ``MAX_CONNECTIONS`` connections each.
- ``OpenAIModel`` is what the driver resolves from the IR (``resolve_models``): URLs (an ``env`` reference
  is read from the driver's environment, comma-separated URLs are load-balanced), the API key (from the
  environment only; held in a ``Secret`` whose repr hides it), params, timeout and retries.
- ``OpenAIClient.call(LLMCall, key)`` posts to ``/chat/completions`` (``completion`` posts to
  ``/completions``); a ``text/event-stream`` reply (``stream = true`` in the params) is parsed as SSE.
  The body is ``json.dumps``'s bytes (``encode_body``), a row's long texts escaped once and kept
  until ``forget(key)`` (the agent calls it when the row leaves the actor).
  Routing, stickiness by row and the circuit breaker are ``endpoints.EndpointPool``'s.
- Retries: connection errors, timeouts, 429, 5xx and unparsable replies are retried ``retries`` times
  with exponential backoff and jitter, or after the server's ``Retry-After`` (or ``retry-after-ms``) when
  it sends one; other 4xx are final. After the last attempt ``ModelCallError`` says why; the agent
  writes the row as ``error`` with reason ``model_error`` and that detail.
- Rate limiting is not failure: a 429 (or a 503 with ``Retry-After``) uses none of the call's attempts
  while the model makes progress (some call succeeded, or this call was first refused, less than
  ``THROTTLE_PROGRESS_S`` ago), for up to ``THROTTLE_WAIT_S`` from the call's first such answer; a
  server that refuses everything for longer uses the attempts up. A 429 ``insufficient_quota`` (an
  exhausted account, not a rate) is final.
- Adaptive concurrency (``adaptive``, on unless ``mxc run --adaptive-concurrency off``): each endpoint
  has an ``aimd.AdaptiveLimit`` on its calls in flight, cut on 429/503/timeouts and latency rising,
  grown back on success, up to ``max_limit`` (the run's ``--max-in-flight``); a ``Retry-After`` pauses
  the whole endpoint, not just the call that got it. A call waiting for a slot is not sent.
- The API key never leaves where it belongs: it is sent only to the model's own URLs (a redirect to
  another origin goes there without it: the probe's own redirect handler, aiohttp's for calls), and
  every text a server sends back that can reach the output, the summary or a log (error bodies, and
  the reply text itself) is scrubbed of the key, whole or any prefix of 8 characters or more
  (:func:`scrub`), before it is cut to length.
- Simulator hints: for a model whose every endpoint is an ``mxc sim-server`` (it lists its models as
  ``owned_by: "matrixlang-sim"``, probed by ``resolve_models``), the request carries
  ``"mx_sim": {"text", "tokens", "seed"}`` from the LLMCall (when the engine rendered them: the agent
  builds its engine as under the simulator then), so the server replies exactly as the in-cluster
  simulator would (docs/services.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterable, Hashable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from ..irtypes import EnvRef, ModelSpec, parse_models
from ..names import (
    ADAPTIVE_CONCURRENCY,
    CALL_TIMEOUT_S,
    MAX_IN_FLIGHT,
    OUTAGE_WAIT_S,
    RETRIES,
    THROTTLE_PROGRESS_S,
    THROTTLE_WAIT_S,
)
from ..semantics.engine import LLMCall, Reply
from ..semantics.message import without_runtime_keys
from . import http1
from .aimd import AdaptiveLimit
from .endpoints import Endpoint, EndpointPool, display_url
from .stats import CallStats

log = logging.getLogger("matrixlang.runtime.openai")

SIM_OWNER = "matrixlang-sim"       # /v1/models `owned_by` of mxc sim-server
MAX_CONNECTIONS = 1024             # pooled connections per process
MAX_RETRY_AFTER_S = 60.0           # a longer Retry-After is capped
RETRY_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx
REDIRECTS = frozenset({301, 302, 303, 307, 308})  # the lean client hands these to aiohttp
HTTP_CLIENT_ENV = "MX_HTTP_CLIENT"                # "aiohttp": every call through aiohttp; else lean for http://


class Secret:
    """A credential: ``str()``/``repr()`` never show it; ``.value`` does."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self):
        return (Secret, (self.value,))


class ModelCallError(Exception):
    """A model call failed for good (after retries, or with a final 4xx). ``detail`` says why (the row's
    ``_meta.detail`` is ``model 'NAME': `` + detail); ``str()`` names the model too."""

    def __init__(self, model: str, detail: str, attempts: int, retryable: bool) -> None:
        super().__init__(f"model {model!r}: {detail}")
        self.model, self.detail, self.attempts, self.retryable = model, detail, attempts, retryable

    def __reduce__(self):
        return (ModelCallError, (self.model, self.detail, self.attempts, self.retryable))


class _Retry(Exception):
    """One attempt failed in a way worth retrying; ``retry_after`` is the server's wish (seconds)."""

    def __init__(self, detail: str, *, breaker: bool | None, retry_after: float | None = None,
                 throttle: bool = False, overload: bool = False) -> None:
        super().__init__(detail)
        self.detail, self.breaker, self.retry_after = detail, breaker, retry_after
        self.throttle = throttle           # rate limited (429, 503 with Retry-After): no attempt used
        self.overload = overload           # a signal for the endpoint's AIMD limit (429, 503, timeout)


class _Final(Exception):
    """One attempt failed in a way no retry fixes (400, 401, 404, ...)."""



def completion_prompt(messages: list[dict]) -> str:
    """The text a ``api = "completions"`` model is sent: the agent's conversation as it would go to a
    chat model (system, earlier steps, prompt), each message's content in order, a blank line apart."""
    return "\n\n".join(m["content"] for m in messages)

# ---- the request body ------------------------------------------------------------------------------

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode   # json.dumps(x, those args)
_escape = json.encoder.encode_basestring          # what that encoder writes for a string
_MESSAGE_KEYS = {"role": b'"role":', "content": b'"content":'}
ENCODED_MIN = 256                       # texts at least this long are kept encoded (EncodedTexts)


class EncodedTexts(dict):
    """One row's long texts (``ENCODED_MIN`` characters or more) as JSON (UTF-8), encoded on first use:
    a conversation's history goes out whole at every step, and escaping every text again each time
    was most of the JSON cost of a call. ``texts[text]`` is ``json.dumps(text, ensure_ascii=False)
    .encode()`` (UnicodeEncodeError for a lone surrogate, as that raises)."""

    __slots__ = ()

    def __missing__(self, text: str) -> bytes:
        b = self[text] = _escape(text).encode()
        return b


def _encode_message(m: Any, texts: EncodedTexts) -> bytes:
    if type(m) is not dict:
        return _dumps(m).encode()
    items = []
    for k, v in m.items():
        key = _MESSAGE_KEYS.get(k) if type(k) is str else None
        if key is None:
            if type(k) is not str:
                return _dumps(m).encode()
            key = (_escape(k) + ":").encode()
        if type(v) is str:
            items.append(key + (texts[v] if len(v) >= ENCODED_MIN else _escape(v).encode()))
        else:
            items.append(key + _dumps(v).encode())
    return b"{" + b",".join(items) + b"}"


_MESSAGE_HEADS = {r: b'{"role":"%s","content":' % r.encode() for r in ("system", "user", "assistant")}


def encode_body(body: Mapping[str, Any], texts: EncodedTexts) -> bytes:
    """``json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()``, byte for byte, with the
    long texts of ``body["messages"]`` taken from ``texts``; the pieces are joined once."""
    out: list[bytes] = []
    sep = b"{"
    for k, v in body.items():
        if type(k) is not str:
            return _dumps(body).encode()
        out += (sep, (_escape(k) + ":").encode())
        sep = b","
        if k == "messages" and type(v) is list:
            msep = b"["
            for m in v:      # the usual message, {"role": ..., "content": "..."} in that order, inline
                out.append(msep)
                msep = b","
                if type(m) is dict and len(m) == 2 and next(iter(m)) == "role":
                    r, c = m["role"], m.get("content")
                    head = _MESSAGE_HEADS.get(r) if type(r) is str else None
                    if head is not None and type(c) is str:
                        out += (head, texts[c] if len(c) >= ENCODED_MIN else _escape(c).encode(), b"}")
                        continue
                out.append(_encode_message(m, texts))
            out.append(b"]" if v else b"[]")
        else:
            out.append(_dumps(v).encode())
    out.append(b"}" if out else b"{}")
    return b"".join(out)


@dataclass(slots=True)
class OpenAIModel:
    """One IR model with ``backend = "openai"``, resolved for calling (picklable)."""

    model: str                             # the IR's models key
    name: str | None                       # the "model" sent to the server
    urls: list[str]
    params: dict = field(default_factory=dict)
    api_key: Secret | None = None
    api_key_env: str | None = None         # read in the calling process when api_key is None
    timeout_s: float = CALL_TIMEOUT_S
    retries: int = RETRIES
    sim_hints: bool = False                # send "mx_sim" (every endpoint is an mxc sim-server)
    api: str = "chat"                      # "chat": POST /chat/completions; "completions": POST /completions
    outage_wait_s: float = OUTAGE_WAIT_S  # waiting while every endpoint is down uses no attempt, this long
    throttle_wait_s: float = THROTTLE_WAIT_S  # 429s use no attempt this long (while the model answers)
    throttle_progress_s: float = THROTTLE_PROGRESS_S  # ... if some call succeeded this recently
    adaptive: bool = ADAPTIVE_CONCURRENCY  # AIMD limit of calls in flight per endpoint
    max_limit: int = MAX_IN_FLIGHT         # its ceiling (and start)
    backoff_s: float = 0.25                # first retry delay (before jitter); doubles per retry
    max_backoff_s: float = 8.0
    failure_threshold: int = 3
    cooldown_s: float = 2.0


@dataclass(slots=True)
class ClientStats(CallStats):
    """Counters of one client (no secrets): those of every client, and the HTTP path's own."""

    retry_after: int = 0                   # retries that waited for the server's Retry-After
    outage_waits: int = 0                  # waits while every endpoint was down (no attempt used)
    outage_s: float = 0.0                  # seconds spent in those waits, all calls together
    throttled: int = 0                     # 429 answers, and 503 with Retry-After
    throttle_free: int = 0                 # of those, retried without using an attempt
    sleeps: list[float] = field(default_factory=list)      # the last 1000 retry delays (seconds)


# ---- resolving models from the IR (driver side) ------------------------------------------------

def resolve_urls(spec: tuple[str, ...] | EnvRef | None, environ: Mapping[str, str], model: str) -> list[str]:
    """The base URLs of a model's ``url``: literal URLs, or an ``env`` reference (comma-separated values).
    A URL without a path gets ``/v1``. ValueError when there is none or one is not http(s)."""
    if isinstance(spec, EnvRef):
        raw = environ.get(spec.env) or spec.default
        if not raw:
            raise ValueError(f"model {model!r}: ${spec.env} is not set and the program gives no default URL")
        items = raw.split(",")
    elif spec is not None:
        items = [u for s in spec for u in str(s).split(",")]
    else:
        raise ValueError(f"model {model!r}: no url (backend openai needs url = \"http://...\" or env(...))")
    urls = []
    for u in (x.strip() for x in items):
        if not u:
            continue
        if not u.startswith(("http://", "https://")):
            raise ValueError(f"model {model!r}: URL {display_url(u)!r} must start with http:// or https://")
        u = u.rstrip("/")
        if u.count("/") == 2:          # scheme://host[:port] only
            u += "/v1"
        urls.append(u)
    if not urls:
        raise ValueError(f"model {model!r}: the url list is empty")
    return urls


def resolve_model(m: ModelSpec, limits: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> OpenAIModel:
    """A model (backend openai) resolved against ``environ``: URLs and API key."""
    key: Secret | None = None
    key_env = None
    if m.api_key is not None:
        key_env = m.api_key.env
        raw = environ.get(key_env) or m.api_key.default
        key = Secret(raw) if raw else None
    return OpenAIModel(
        model=m.key, name=m.name, urls=resolve_urls(m.url, environ, m.key),
        params=dict(m.params), api_key=key, api_key_env=key_env, api=m.api,
        timeout_s=m.timeout_s if m.timeout_s is not None else float(limits.get("call_timeout_s", CALL_TIMEOUT_S)),
        retries=m.retries if m.retries is not None else int(limits.get("retries", RETRIES)))


def resolve_models(ir: Mapping[str, Any], environ: Mapping[str, str] = os.environ, *, probe: bool = True,
                   probe_timeout_s: float = 3.0) -> dict[str, OpenAIModel]:
    """Every ``backend = "openai"`` model of the IR, resolved; with ``probe``, ``sim_hints`` is set for a
    model whose every endpoint answers ``GET /models`` as an mxc sim-server. ValueError on a bad URL
    (IRError, a ValueError, on a malformed model)."""
    out = {}
    for name, m in sorted(parse_models(ir).items()):
        if m.backend != "openai":
            continue
        spec = resolve_model(m, ir.get("limits", {}), environ)
        if probe:
            spec.sim_hints = all(probe_owner(u, spec.api_key, probe_timeout_s) == SIM_OWNER for u in spec.urls)
        out[name] = spec
    return out


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the default port made explicit."""
    p = urllib.parse.urlsplit(url)
    scheme = p.scheme.lower()
    try:
        port = p.port
    except ValueError:
        port = None
    return scheme, (p.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


class _SameOriginAuth(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but sends credentials only to the origin they were meant for (urllib's own
    handler copies every header, ``Authorization`` too, to wherever the server redirects)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(newurl) != origin(req.full_url):
            for name in ("Authorization", "Proxy-authorization", "Cookie"):
                new.remove_header(name)
        return new


_PROBE_OPENER = urllib.request.build_opener(_SameOriginAuth)


def probe_owner(url: str, key: Secret | None = None, timeout_s: float = 3.0) -> str | None:
    """The ``owned_by`` of the first model ``GET {url}/models`` lists, or None when it does not answer.
    The key goes to ``url``'s origin only (a redirect elsewhere is followed without it)."""
    req = urllib.request.Request(f"{url}/models")
    if key is not None:
        req.add_header("Authorization", f"Bearer {key.value}")
    try:
        with _PROBE_OPENER.open(req, timeout=timeout_s) as resp:   # noqa: S310 - http(s) only, checked
            data = json.loads(resp.read())
        return data["data"][0].get("owned_by")
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, urllib.error.URLError):
        return None


# ---- the per-process HTTP session ----------------------------------------------------------------

_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}


def shared_session() -> aiohttp.ClientSession:
    """This process's pooled session for the running event loop (created on first use)."""
    return http1.per_loop(_sessions, lambda _loop: aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0, ttl_dns_cache=300,
                                       enable_cleanup_closed=True),
        trust_env=False, cookie_jar=aiohttp.DummyCookieJar()))


async def close_shared_session() -> None:
    """Close this loop's session and its lean connection pool (tests, clean shutdown)."""
    http1.close_shared_pool()
    s = _sessions.pop(asyncio.get_running_loop(), None)
    if s is not None:
        await s.close()


# ---- the client ---------------------------------------------------------------------------------

def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """The server's wish in seconds: ``retry-after-ms`` (OpenAI's) when readable, else ``Retry-After``."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            v = float(ms) / 1000.0
        except ValueError:
            v = None
        if v is not None and v == v:
            return min(max(v, 0.0), MAX_RETRY_AFTER_S)
    return parse_retry_after(headers.get("Retry-After"))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds, possibly fractional, or an HTTP date);
    None when absent or unreadable. Never negative; capped at MAX_RETRY_AFTER_S."""
    if value is None:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            secs = parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if secs != secs:   # NaN
        return None
    return min(max(secs, 0.0), MAX_RETRY_AFTER_S)


def http_client(environ: Mapping[str, str] = os.environ) -> str:
    """``"aiohttp"`` when ``$MX_HTTP_CLIENT`` asks for it (every call through aiohttp), else ``"lean"``
    (``http1`` for plain-http endpoints, aiohttp for the others)."""
    v = (environ.get(HTTP_CLIENT_ENV) or "lean").strip().lower()
    if v not in ("lean", "aiohttp"):
        log.warning("$%s=%r: not 'lean' or 'aiohttp'; using lean", HTTP_CLIENT_ENV, v)
    return "aiohttp" if v == "aiohttp" else "lean"


class OpenAIClient:
    """Calls one model's OpenAI-compatible endpoints (see the module docstring)."""

    def __init__(self, spec: OpenAIModel, *, environ: Mapping[str, str] = os.environ,
                 rng: random.Random | None = None) -> None:
        self.spec = spec
        self.pool = EndpointPool(spec.urls, failure_threshold=spec.failure_threshold, cooldown_s=spec.cooldown_s,
                                 max_cooldown_s=max(spec.cooldown_s, 60.0))
        key = spec.api_key.value if spec.api_key is not None else (
            environ.get(spec.api_key_env) if spec.api_key_env else None)
        self._key = key or None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self._key:
            self._headers["Authorization"] = f"Bearer {self._key}"
        self._timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
        self.http = http_client(environ)
        # per endpoint, the lean client's (pool key, request heads by path); None: aiohttp's endpoint
        keys = [http1.pool_key(u) if self.http == "lean" else None for u in spec.urls]
        lean_headers = {**self._headers, "User-Agent": "matrixlang"}
        self._lean = [None if k is None else (k, {p: http1.request_head(u + p, lean_headers)
                                                  for p in ("/chat/completions", "/completions")})
                      for u, k in zip(spec.urls, keys, strict=True)]
        self.rng = rng or random.Random()
        self.stats = ClientStats()
        self._texts: dict[Hashable, EncodedTexts] = {}   # per row (key): its texts, encoded once
        self._max_rows = max(4096, 4 * spec.max_limit)   # more: forget() is not called, start over
        self._up = False                       # some endpoint has answered a call
        self._last_ok: float | None = None     # when a call last succeeded (the pool's clock)
        self.limits = ([AdaptiveLimit(max(1, spec.max_limit), clock=self.pool.clock) for _ in spec.urls]
                       if spec.adaptive else None)
        self._down_since: float | None = None  # every endpoint down since (the pool's clock)

    def __repr__(self) -> str:
        return f"OpenAIClient(model={self.spec.model!r}, urls={[e.shown for e in self.pool.endpoints]})"

    async def call(self, call: LLMCall, key: Hashable | None = None) -> Reply:
        """The reply to an agent's LLMCall; ``key`` (the row id) makes its calls sticky."""
        sim = None
        if self.spec.sim_hints and (call.sim_text is not None or call.sim_tokens > 0):   # the engine rendered it
            sim = {"text": call.sim_text, "tokens": call.sim_tokens, "seed": call.seed_key}
        if self.spec.api == "completions":
            return await self.completion(completion_prompt(call.messages), params=call.params, key=key, sim=sim,
                                         prompt_tokens=call.prompt_tokens)
        return await self.chat(call.messages, params=call.params, key=key, sim=sim,
                               prompt_tokens=call.prompt_tokens)

    async def chat(self, messages: list[dict], *, params: Mapping | None = None, key: Hashable | None = None,
                   sim: dict | None = None, prompt_tokens: int | None = None) -> Reply:
        """One chat completion (POST /chat/completions). Messages are sent as ``{role, content}``: the
        ``token_ids`` a ``vllm`` model's history may carry are not for OpenAI servers."""
        body = {"model": self.spec.name, "messages": without_runtime_keys(messages), **(params or self.spec.params)}
        return await self._complete("/chat/completions", body, key, sim, prompt_tokens, chat=True)

    async def completion(self, prompt: str, *, params: Mapping | None = None, key: Hashable | None = None,
                         sim: dict | None = None, prompt_tokens: int | None = None) -> Reply:
        """One text completion (POST /completions)."""
        body = {"model": self.spec.name, "prompt": prompt, **(params or self.spec.params)}
        return await self._complete("/completions", body, key, sim, prompt_tokens, chat=False)

    def forget(self, key: Hashable) -> None:
        """Drop what is kept for row ``key`` (its encoded texts): the row has left the caller."""
        self._texts.pop(key, None)

    def rows_kept(self) -> int:
        """Rows whose encoded texts are kept (until :meth:`forget`)."""
        return len(self._texts)

    def _texts_of(self, key: Hashable | None) -> EncodedTexts:
        if key is None:
            return EncodedTexts()
        texts = self._texts.get(key)
        if texts is None:
            if len(self._texts) >= self._max_rows:
                self._texts.clear()
            texts = self._texts[key] = EncodedTexts()
        return texts

    def snapshot(self) -> dict:
        """Counters and per-endpoint state (with its adaptive limit), safe to log."""
        eps = self.pool.snapshot()
        if self.limits is not None:
            for e, lim in zip(eps, self.limits, strict=True):
                e["aimd"] = lim.snapshot()
        return {**self.stats.as_dict(), "adaptive": self.limits is not None, "http": self.http, "endpoints": eps}

    # -- internals ----------------------------------------------------------------------------------
    async def _complete(self, path: str, body: dict, key: Hashable | None, sim: dict | None,
                        prompt_tokens: int | None, *, chat: bool) -> Reply:
        if sim is not None:
            body["mx_sim"] = sim
        if body.get("stream"):
            body.setdefault("stream_options", {"include_usage": True})
        data = encode_body(body, self._texts_of(key))
        st = self.stats
        st.calls += 1
        tried: list[Endpoint] = []
        last = "no attempt"
        attempts = self.spec.retries + 1
        attempt = 0
        waited = 0.0                             # in an outage of every endpoint
        throttles = 0                            # rate-limited answers that used no attempt
        first_throttle: float | None = None
        while True:
            ep = self._pick(key, tried)
            lim = self.limits[ep.index] if self.limits is not None else None
            sent = await lim.acquire() if lim is not None else 0.0   # waiting here is not in flight
            self.pool.begin(ep)
            st.attempts += 1
            t0 = time.monotonic()
            health: bool | None = None           # neutral unless the attempt says otherwise
            retry: _Retry | None = None
            final = False
            try:
                reply = await self._attempt(ep, path, data, chat, prompt_tokens)
                health = True
            except _Retry as e:
                health = e.breaker
                retry = e
            except _Final as e:
                health, final = True, True       # the server answered: it is healthy
                st.failed += 1
                kind = str(e).split(":", 1)[0]
                st.errors[kind] = st.errors.get(kind, 0) + 1
                raise ModelCallError(self.spec.model, self._clean(f"{e} from {ep.shown} (not retried)"),
                                     attempt + 1, False) from None
            finally:                             # also when the caller is cancelled
                self.pool.end(ep, health)
                if lim is not None:
                    if health is True and not final:
                        lim.on_success(time.monotonic() - t0, sent)
                    elif retry is not None and retry.overload:
                        lim.on_overload(sent, retry.retry_after)
                    lim.release()
            if health is True:
                st.ok += 1
                self._up, self._down_since, self._last_ok = True, None, self.pool.clock()
                return reply
            assert retry is not None
            last = f"{retry.detail} from {ep.shown}"
            kind = retry.detail.split(":", 1)[0]
            st.errors[kind] = st.errors.get(kind, 0) + 1
            if ep not in tried:
                tried.append(ep)
            if retry.throttle:
                st.throttled += 1
                now = self.pool.clock()
                first_throttle = now if first_throttle is None else first_throttle
                if self._progress(now, first_throttle) and now - first_throttle < self.spec.throttle_wait_s:
                    # rate limited while the model serves other calls: wait, keeping the attempts
                    st.throttle_free += 1
                    throttles += 1
                    await self._sleep(min(throttles - 1, 16), retry.retry_after, lim is None)
                    continue
            if health is False and self._outage():
                # every endpoint of a service that was up is down: wait for the first to come back,
                # keeping the call's attempts for failures of a live service (the row stays in flight,
                # so no new row is admitted meanwhile)
                delay = self._outage_delay()
                waited += delay
                st.outage_waits += 1
                st.outage_s += delay
                tried.clear()
                await asyncio.sleep(delay)
                continue
            attempt += 1
            if attempt >= attempts:
                break
            await self._sleep(attempt - 1, retry.retry_after, lim is None)
        st.failed += 1
        down = f" (every endpoint down, waited {waited:.0f}s)" if waited else ""
        raise ModelCallError(self.spec.model, self._clean(f"{attempts} attempt{'s' * (attempts != 1)} failed{down}; "
                                                          f"last: {last}"), attempts, True)

    def _pick(self, key: Hashable | None, tried: list[Endpoint]) -> Endpoint:
        """The endpoint of the next attempt: not one that failed this call (unless all did), nor, while
        another has room, one whose adaptive limit is full or paused."""
        avoid = tried if len(tried) < len(self.pool) else []
        if self.limits is not None and len(self.pool) > 1:
            busy = [e for e in self.pool.endpoints if not self.limits[e.index].free() and e not in avoid]
            if busy and len(avoid) + len(busy) < len(self.pool):
                avoid = [*avoid, *busy]
        return self.pool.pick(key, avoid)

    def _progress(self, now: float, first_throttle: float) -> bool:
        """Whether the model is serving: some call succeeded, or this call was first refused, recently
        (its 429s are then rate limiting, not a refusal of everything)."""
        since = first_throttle if self._last_ok is None else max(self._last_ok, first_throttle)
        return now - since < self.spec.throttle_progress_s

    def _outage(self) -> bool:
        """Whether every endpoint is down after having served (a service that never answered fails
        fast), for less than ``outage_wait_s`` so far (a longer outage fails calls fast again)."""
        if not self._up or self.pool.healthy():
            return False
        now = self.pool.clock()
        if self._down_since is None:
            self._down_since = now
        return now - self._down_since < self.spec.outage_wait_s

    def _outage_delay(self) -> float:
        """Until the first endpoint's breaker lets a trial through, at least the first backoff, jittered."""
        soonest = min(e.open_until for e in self.pool.endpoints) - self.pool.clock()
        base = max(soonest, self.spec.backoff_s)
        return base + self.rng.uniform(0, self.spec.backoff_s)

    async def _sleep(self, attempt: int, retry_after: float | None, honour: bool = True) -> None:
        """Before a retry: the server's ``retry_after`` (unless ``honour`` is False: the endpoint's
        adaptive limit holds every call until then), else exponential backoff with jitter."""
        st = self.stats
        st.retries += 1
        if retry_after is not None:
            delay = retry_after if honour else 0.0
            st.retry_after += 1
        else:   # exponential backoff, "equal jitter": half fixed, half random
            cap = min(self.spec.max_backoff_s, self.spec.backoff_s * (2 ** attempt))
            delay = cap / 2 + self.rng.uniform(0, cap / 2)
        if len(st.sleeps) >= 1000:
            del st.sleeps[:500]
        st.sleeps.append(delay)
        await asyncio.sleep(delay)

    async def _attempt(self, ep: Endpoint, path: str, data: bytes, chat: bool,
                       prompt_tokens: int | None) -> Reply:
        lean = self._lean[ep.index]
        try:
            if lean is None:
                text, usage = await self._post_aiohttp(ep, path, data, chat)
            else:
                key, heads = lean
                async with http1.deadline(self.spec.timeout_s):
                    resp = await http1.shared_pool(MAX_CONNECTIONS).request(
                        key, b"".join((heads[path], b"%d\r\n\r\n" % len(data), data)))
                    try:
                        redirect = resp.status in REDIRECTS and resp.headers.get("location") is not None
                        if not redirect:
                            text, usage = await self._reply(resp, chat)
                    finally:
                        resp.release()
                    if redirect:     # followed as ever, by aiohttp (the key stays with its origin)
                        text, usage = await self._post_aiohttp(ep, path, data, chat)
        except (_Retry, _Final):
            raise
        except asyncio.TimeoutError:
            raise _Retry(f"timeout: no reply within {self.spec.timeout_s:g}s", breaker=False,
                         overload=True) from None
        except (aiohttp.ClientPayloadError, http1.BrokenReply) as e:
            raise _Retry(f"broken reply: {e}", breaker=False) from None
        except (aiohttp.ClientError, OSError) as e:
            raise _Retry(f"connection error: {type(e).__name__}: {e}", breaker=False) from None
        except ValueError as e:
            raise _Retry(f"bad reply: {e}", breaker=False) from None
        text = self._clean(text)           # a server may echo the key in its reply
        ptok = usage.get("prompt_tokens") if usage else None
        ctok = usage.get("completion_tokens") if usage else None
        if not isinstance(ptok, int):
            ptok = prompt_tokens if prompt_tokens is not None else 0
        if not isinstance(ctok, int):
            ctok = max(1, len(text) // 4) if text else 0
        return Reply(text, ptok, ctok)

    async def _post_aiohttp(self, ep: Endpoint, path: str, data: bytes, chat: bool) -> tuple[str, dict | None]:
        async with shared_session().post(ep.url + path, data=data, headers=self._headers,
                                         timeout=self._timeout) as resp:
            return await self._reply(resp, chat)

    async def _reply(self, resp: aiohttp.ClientResponse | http1.Response, chat: bool) -> tuple[str, dict | None]:
        """(text, usage) of a reply from either client; _Retry or _Final for an HTTP error status."""
        status = resp.status
        if status >= 400:
            text = await resp.text(errors="replace")
            err = _error_message(text, self._key)
            if status == 429 and "insufficient_quota" in text:
                raise _Final(f"HTTP 429: {err}")
            if status >= 500 or status in RETRY_STATUS:
                wait = retry_after_of(resp.headers)
                throttle = status == 429 or (status == 503 and wait is not None)
                raise _Retry(f"HTTP {status}: {err}", retry_after=wait, throttle=throttle,
                             breaker=None if status < 500 or throttle else False,
                             overload=status in (429, 503))
            raise _Final(f"HTTP {status}: {err}")
        if resp.content_type == "text/event-stream":
            return await _read_stream(resp.content, chat, self._key)
        return _parse_reply(await resp.read(), chat)

    def _clean(self, s: str) -> str:
        """``s`` without the API key, whatever a server echoed (:func:`scrub`)."""
        return scrub(s, self._key)


SCRUB_MIN = 8    # a run of the key this long (from its start) is scrubbed


def scrub(text: str, secret: str | None, min_len: int = SCRUB_MIN) -> str:
    """``text`` with every occurrence of ``secret``, and of any prefix of it at least ``min_len``
    characters long (a truncated echo), replaced by ``***``. Cheap when the key is not there."""
    if not secret or not text:
        return text
    if secret in text:
        text = text.replace(secret, "***")
    head = secret[:min_len]
    if len(head) < min_len or head not in text:
        return text
    out, i = [], 0
    while (j := text.find(head, i)) >= 0:
        k = j + len(head)
        n = len(head)
        while k < len(text) and n < len(secret) and text[k] == secret[n]:
            k += 1
            n += 1
        out += (text[i:j], "***")
        i = k
    out.append(text[i:])
    return "".join(out)


def _error_message(text: str, secret: str | None = None) -> str:
    """The message of an OpenAI-style error body, else the body's start; scrubbed of ``secret`` before
    it is cut to 300 characters (a cut would leave a prefix of the key that no longer matches it)."""
    text = scrub(text, secret)
    try:
        err = json.loads(text).get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            return str(msg)[:300]
    except (ValueError, AttributeError):
        pass
    return text.strip()[:300] or "(empty body)"


def _parse_reply(raw: bytes, chat: bool) -> tuple[str, dict | None]:
    """(text, usage) of a JSON completion reply; ValueError when it has no choice."""
    d = json.loads(raw)
    try:
        choice = d["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"no choices[0].{'message.content' if chat else 'text'} in the reply") from None
    usage = d.get("usage")
    return ("" if text is None else str(text)), (usage if isinstance(usage, dict) else None)


async def _read_stream(lines: AsyncIterable[bytes], chat: bool,
                       secret: str | None = None) -> tuple[str, dict | None]:
    """(text, usage) of a server-sent-events completion stream (``data: {...}`` ... ``data: [DONE]``),
    from the body's lines (either client's ``resp.content``)."""
    parts: list[str] = []
    usage = None
    done = False
    async for raw in lines:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            break
        d = json.loads(payload)
        if not isinstance(d, dict):
            continue
        if isinstance(d.get("usage"), dict):
            usage = d["usage"]
        if "error" in d:
            raise ValueError(f"error in stream: {_error_message(payload.decode(errors='replace'), secret)}")
        for ch in d.get("choices") or ():
            piece = (ch.get("delta") or {}).get("content") if chat else ch.get("text")
            if piece:
                parts.append(piece)
    if not done:
        raise ValueError("the stream ended without data: [DONE]")
    return "".join(parts), usage
