"""A lean HTTP/1.1 client for the ``openai`` backend's plain-``http://`` calls: aiohttp was ~45% of an
agent's event loop at 1,024 calls in flight; a whole ``OpenAIClient`` call costs 0.13-0.14 ms of CPU
on this client against 0.17-0.26 ms on aiohttp (docs/benchmarks.md, the HTTP path).

- One :class:`Pool` per event loop (:func:`shared_pool`), keyed by (scheme, host, port), at most
  ``limit`` connections in all (a request beyond waits for one); idle connections are kept alive, the
  most recently used first, and closed after ``KEEPALIVE_S`` idle (as aiohttp does).
- A connection is an ``asyncio.Protocol``: the request goes out in one write (its head precomputed by
  the caller, :func:`request_head`); the reply is parsed as it arrives: ``Content-Length``,
  ``Transfer-Encoding: chunked`` (trailers skipped) or a body that ends with the connection; gzip and
  deflate bodies are decoded (none is asked for). A ``text/event-stream`` reply is handed over at its
  head and read line by line (``Response.content``); any other reply only once complete, one future per
  call. One request at a time per connection: no pipelining.
- A reused connection that fails before the first byte of the reply (the server closed it while idle)
  is replaced by a fresh one and the request sent again, once. A reply with ``Connection: close`` (or
  HTTP/1.0 without keep-alive), a reply read only partly, or a cancelled request: the connection is
  closed, never reused.
- Errors: :class:`ClientConnectorError` (connect failed), :class:`ServerDisconnectedError` (closed
  before the reply's head was complete) and :class:`ProtocolError` (a malformed head) are
  ``ConnectionError``s; :class:`BrokenReply` is a body cut short or malformed. Names and messages are
  aiohttp's, so the caller's error details read the same with either client. Deadlines are the
  caller's (:func:`deadline`: ``asyncio.timeout``, ``async_timeout`` before Python 3.11).
"""

from __future__ import annotations

import asyncio
import socket
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TypeVar
from urllib.parse import urlsplit

try:
    from asyncio import timeout as deadline  # the caller's per-request deadline (Python 3.11+)
except ImportError:  # pragma: no cover - Python 3.10: aiohttp's own dependency there
    from async_timeout import timeout as deadline  # type: ignore[no-redef]  # noqa: F401

KEEPALIVE_S = 15.0                 # an idle connection is closed after this long
DNS_TTL_S = 300.0                  # a host name's addresses are kept this long
MAX_HEAD = 65536                   # a reply head (status line and headers) longer than this is refused
_IDLE, _HEAD, _LENGTH, _SIZE, _CHUNK, _CHUNK_END, _TRAILER, _TO_CLOSE, _CLOSED = range(9)


class ServerDisconnectedError(ConnectionError):
    """The server closed the connection before the reply's head was complete."""

    def __init__(self, message: str = "Server disconnected") -> None:
        super().__init__(message)


class ClientConnectorError(ConnectionError):
    """No connection to the server (refused, unreachable, name not resolved)."""


class ProtocolError(ConnectionError):
    """The server's reply is not HTTP/1.x as this client reads it."""


class BrokenReply(Exception):
    """The reply's body was cut short or malformed."""


class Headers(dict):
    """A reply's headers, names lowercased; ``get`` and ``[]`` take a name in any case."""

    __slots__ = ()

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name.lower() if isinstance(name, str) else name)


def pool_key(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a plain ``http://`` URL this client can call; None for anything else
    (https, credentials in the URL, a host that is not ASCII): those stay with aiohttp."""
    p = urlsplit(url)
    if p.scheme.lower() != "http" or "@" in p.netloc or not p.hostname or not p.netloc.isascii():
        return None
    try:
        port = p.port or 80
    except ValueError:
        return None
    return "http", p.hostname, port


def request_head(url: str, extra: dict[str, str]) -> bytes:
    """The bytes of a POST to ``url`` (``pool_key`` accepts it) up to ``Content-Length: ``: the caller
    appends the body's length, ``\\r\\n\\r\\n`` and the body."""
    p = urlsplit(url)
    target = (p.path or "/") + (f"?{p.query}" if p.query else "")
    lines = [f"POST {target} HTTP/1.1", f"Host: {p.netloc}", *(f"{k}: {v}" for k, v in extra.items())]
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


class Response:
    """A reply: ``status``, ``headers``, ``content_type`` (the lowercased media type); its body with
    ``read()``/``text()``, or, for an event stream, line by line from ``content``."""

    __slots__ = ("status", "headers", "content_type", "keep", "_body", "_conn", "_buf", "_eof", "_exc",
                 "_waiter", "streaming")

    def __init__(self, status: int, headers: Headers, streaming: bool) -> None:
        self.status, self.headers, self.streaming = status, headers, streaming
        ct = headers.get("content-type")
        self.content_type = ct.partition(";")[0].strip().lower() if ct else "application/octet-stream"
        self.keep = True                       # the connection may carry another request after this one
        self._body = b""
        self._conn: _Conn | None = None        # held while an event stream is read
        self._buf = bytearray()
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future | None = None

    async def read(self) -> bytes:
        """The whole body."""
        if self.streaming:
            self._body = b"".join([line async for line in self.content])
            self.streaming = False
        return self._body

    async def text(self, errors: str = "strict") -> str:
        """The body decoded by the charset of its Content-Type (else UTF-8)."""
        raw = await self.read()
        ct = self.headers.get("content-type") or ""
        charset = "utf-8"
        for param in ct.split(";")[1:]:
            k, _, v = param.partition("=")
            if k.strip().lower() == "charset" and v.strip():
                charset = v.strip().strip('"')
        try:
            return raw.decode(charset, errors)
        except LookupError:
            return raw.decode("utf-8", errors)

    @property
    def content(self) -> AsyncIterator[bytes]:
        """The body's lines, each with its ``\\n`` (the last one may have none)."""
        return self._lines()

    async def _lines(self) -> AsyncIterator[bytes]:
        buf = self._buf
        while True:
            i = buf.find(b"\n")
            if i >= 0:
                line = bytes(buf[:i + 1])
                del buf[:i + 1]
                yield line
                continue
            if self._eof:
                if self._exc is not None:
                    raise self._exc
                if buf:
                    line = bytes(buf)
                    buf.clear()
                    yield line
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _feed(self, data: bytes) -> None:
        self._buf += data
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _end(self, exc: BaseException | None) -> None:
        self._eof, self._exc = True, exc
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def release(self) -> None:
        """Give the connection back: to the pool when the reply was read to its end, else closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pool.release(conn, self._eof and self._exc is None and self.keep)


class _Conn(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its reply parsed as it arrives."""

    def __init__(self, pool: Pool, key: tuple[str, str, int]) -> None:
        self.pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = False                   # counted in the pool's connections
        self.idle_since = 0.0
        self.got = False                       # a byte of the current reply has arrived
        self.requests = 0                      # requests sent on it
        self._state = _IDLE
        self._buf = b""
        self._fut: asyncio.Future | None = None
        self._resp: Response | None = None
        self._left = 0
        self._parts: list[bytes] = []
        self._unzip = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes) -> asyncio.Future:
        """Write a request; the future gets its Response (at the head for an event stream, else once
        complete) or the error."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ServerDisconnectedError()
        self._state, self.got, self._resp, self._unzip = _HEAD, False, None, None
        self.requests += 1
        fut = self._fut = self.pool.loop.create_future()
        self.transport.write(data)
        return fut

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._state in (_IDLE, _CLOSED):     # nothing asked: a server talking out of turn
            self.close()
            return
        self.got = True
        buf, self._buf = (self._buf + data if self._buf else data), b""
        try:
            self._parse(buf)
        except (ProtocolError, BrokenReply) as e:
            self._fail(e)
            self.close()
        except (ValueError, zlib.error) as e:
            self._fail(BrokenReply(f"bad body: {e}") if self._state != _HEAD else ProtocolError(str(e)))
            self.close()

    def eof_received(self) -> bool:
        return False                           # close; connection_lost says what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        st = self._state
        if st == _IDLE:
            self.pool.lost(self)
            return
        if st == _TO_CLOSE and exc is None:
            self._done()
            return
        if st == _HEAD:
            err: BaseException = (exc if isinstance(exc, OSError) and not self.got
                                  else ServerDisconnectedError())
        else:
            err = BrokenReply("Response payload is not completed")
        self._fail(err)

    # -- the reply -----------------------------------------------------------------------------------
    def _parse(self, buf: bytes) -> None:
        while buf:
            st = self._state
            if st == _HEAD:
                cut = self._until(buf, b"\r\n\r\n", ProtocolError, "reply head too long")
                if cut is None:
                    return
                head, buf = cut
                self._head(head)
            elif st in (_LENGTH, _CHUNK):
                n = self._left
                if len(buf) < n:
                    self._body(buf)
                    self._left = n - len(buf)
                    return
                self._body(buf[:n] if len(buf) > n else buf)
                buf = buf[n:]
                if st == _LENGTH:
                    self._done()
                else:
                    self._state = _CHUNK_END
            elif st in (_SIZE, _TRAILER, _CHUNK_END):
                cut = self._until(buf, b"\r\n", BrokenReply, "chunk header too long")
                if cut is None:
                    return
                line, buf = cut
                if st == _SIZE:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                    if size < 0:
                        raise BrokenReply("negative chunk size")
                    self._state, self._left = (_TRAILER, 0) if size == 0 else (_CHUNK, size)
                elif st == _CHUNK_END:
                    if line:
                        raise BrokenReply("no CRLF after a chunk")
                    self._state = _SIZE
                elif not line:                  # the empty line after the trailers
                    self._done()
            elif st == _TO_CLOSE:
                self._body(buf)
                return
            else:                               # bytes after the reply: not a connection to reuse
                if self._resp is not None:
                    self._resp.keep = False
                return

    def _until(self, buf: bytes, sep: bytes, error: type[Exception], too_long: str) -> tuple[bytes, bytes] | None:
        """(the bytes before ``sep``, those after it); None, ``buf`` kept for the next bytes, when ``sep``
        has not arrived yet; ``error(too_long)`` when it is still missing after ``MAX_HEAD`` bytes."""
        i = buf.find(sep)
        if i < 0:
            if len(buf) > MAX_HEAD:
                raise error(too_long)
            self._buf = buf
            return None
        return buf[:i], buf[i + len(sep):]

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        if not version.startswith(b"HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.x reply: {lines[0][:40]!r}")
        try:
            status = int(rest[:3])
        except ValueError:
            raise ProtocolError(f"bad status line: {lines[0][:40]!r}") from None
        headers = Headers()
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ProtocolError(f"bad header line: {line[:40]!r}")
            k, v = name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")
            old = dict.get(headers, k)
            dict.__setitem__(headers, k, v if old is None else f"{old}, {v}")
        if 100 <= status < 200:                 # 100 Continue and the like: the reply is still to come
            return
        conn = (dict.get(headers, "connection") or "").lower()
        stream = (dict.get(headers, "content-type") or "").partition(";")[0].strip().lower() == "text/event-stream"
        resp = self._resp = Response(status, headers, stream)
        resp.keep = "keep-alive" in conn if version == b"HTTP/1.0" else "close" not in conn
        enc = (dict.get(headers, "content-encoding") or "identity").strip().lower()
        if enc in ("gzip", "x-gzip", "deflate"):
            self._unzip = zlib.decompressobj(47 if enc != "deflate" else 15)
        elif enc != "identity":
            raise BrokenReply(f"unsupported Content-Encoding {enc!r}")
        self._parts = []
        te = dict.get(headers, "transfer-encoding")
        cl = dict.get(headers, "content-length")
        if status in (204, 304):
            self._state = _LENGTH
            self._left = 0
        elif te is not None and te.lower().rsplit(",", 1)[-1].strip() == "chunked":
            self._state = _SIZE
        elif cl is not None:
            if not cl.strip().isdigit():
                raise ProtocolError(f"bad Content-Length {cl[:40]!r}")
            self._state, self._left = _LENGTH, int(cl)
        else:                                   # the body ends with the connection
            self._state, resp.keep = _TO_CLOSE, False
        if stream:
            resp._conn = self
            self._resolve(resp)
        if self._state == _LENGTH and self._left == 0:
            self._done()

    def _body(self, data: bytes) -> None:
        if self._unzip is not None:
            data = self._unzip.decompress(data)
        if self._resp is not None and self._resp.streaming:
            self._resp._feed(data)
        else:
            self._parts.append(data)

    def _done(self) -> None:
        resp = self._resp
        assert resp is not None
        self._state = _IDLE
        unzip, self._unzip = self._unzip, None
        if unzip is not None:
            self._body(unzip.flush())
        if resp.streaming:
            resp._end(None)
        else:
            resp._body = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self._parts = []
            self._resolve(resp)

    def _resolve(self, resp: Response) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(resp)

    def _fail(self, exc: BaseException) -> None:
        self._state = _CLOSED
        fut, resp = self._fut, self._resp
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        elif resp is not None and resp.streaming and not resp._eof:
            resp._end(exc)


class Pool:
    """Keep-alive connections of one event loop, at most ``limit`` of them (see the module docstring)."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.limit = max(1, limit)
        self.count = 0                          # connections open or opening
        self.opened = 0                         # connections ever opened
        self._idle: dict[tuple[str, str, int], dict[_Conn, None]] = {}
        self._conns: set[_Conn] = set()
        self._waiters: deque[asyncio.Future] = deque()
        self._addrs: dict[tuple[str, int], tuple[float, asyncio.Future]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    async def request(self, key: tuple[str, str, int], data: bytes) -> Response:
        """Send ``data`` (a whole request) to ``key``'s server; its reply. A reused connection that fails
        before the reply's first byte is replaced, once."""
        conn = self._take(key) or await self._connect(key)
        reused = conn.requests > 0
        try:
            try:
                resp = await conn.send(data)
            except OSError:
                if not reused or conn.got:
                    raise
                self._discard(conn)             # stale: the server closed it while it was idle
                conn = await self._connect(key)
                resp = await conn.send(data)
        except BaseException:
            self._discard(conn)
            raise
        if not resp.streaming:
            self.release(conn, resp.keep)
        return resp

    def release(self, conn: _Conn, reuse: bool) -> None:
        """A connection's request is over: keep it idle for the next (``reuse``), else close it."""
        if not reuse or conn.closed or self.closed or conn._state != _IDLE:
            self._discard(conn)
            return
        conn.idle_since = self.loop.time()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = {}
        idle[conn] = None
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(KEEPALIVE_S, self._sweep)
        self._wake()

    def lost(self, conn: _Conn) -> None:
        """An idle connection was closed (by the server)."""
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            del idle[conn]
            self._discard(conn)

    def close(self) -> None:
        """Close every connection; requests in flight fail."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self._conns):
            conn.counted = False
            conn.close()
        self._idle.clear()
        self._conns.clear()
        self.count = 0
        for w in self._waiters:
            if not w.done():
                w.set_exception(ServerDisconnectedError("Connection pool closed"))
        self._waiters.clear()

    # -- internals ------------------------------------------------------------------------------------
    def _take(self, key: tuple[str, str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.popitem()[0]           # the most recently used
            if not conn.closed:
                return conn
            self._discard(conn)
        return None

    async def _connect(self, key: tuple[str, str, int]) -> _Conn:
        while self.count >= self.limit:
            if self.closed:
                raise ServerDisconnectedError("Connection pool closed")
            if self._evict():
                break
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()                # pass the wake-up on
                else:
                    self._waiters.remove(waiter)
                raise
            conn = self._take(key)
            if conn is not None:
                return conn
        self.count += 1
        _, host, port = key
        try:
            conn = await self._open(key, host, port)
        except BaseException:
            self.count -= 1
            self._wake()
            raise
        conn.counted = True
        self.opened += 1
        self._conns.add(conn)
        return conn

    async def _open(self, key: tuple[str, str, int], host: str, port: int) -> _Conn:
        last: OSError | None = None
        try:
            addrs = await self._resolve(host, port)
        except OSError as e:
            raise ClientConnectorError(f"Cannot connect to host {host}:{port} ssl:default [{e.strerror or e}]") from e
        for family, addr in addrs:
            try:
                _, conn = await self.loop.create_connection(lambda: _Conn(self, key), addr[0], addr[1],
                                                            family=family)
                return conn
            except OSError as e:
                last = e
        assert last is not None
        raise ClientConnectorError(f"Cannot connect to host {host}:{port} ssl:default [{last.strerror or last}]"
                                   ) from last

    async def _resolve(self, host: str, port: int) -> list[tuple[int, tuple]]:
        """``host``'s addresses (kept ``DNS_TTL_S``; a literal address is its own)."""
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(family, host)
                return [(family, (host, port))]
            except OSError:
                pass
        now = self.loop.time()
        hit = self._addrs.get((host, port))
        if hit is None or now - hit[0] > DNS_TTL_S or (hit[1].done() and (hit[1].cancelled() or hit[1].exception())):
            fut = asyncio.ensure_future(self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            hit = self._addrs[(host, port)] = (now, fut)
        infos = await asyncio.shield(hit[1])
        return [(fam, addr) for fam, _, _, _, addr in infos]

    def _discard(self, conn: _Conn) -> None:
        conn.close()
        if conn.counted:
            conn.counted = False
            self.count -= 1
            self._conns.discard(conn)
            self._wake()

    def _evict(self) -> bool:
        """Close the longest idle connection (to any server) to make room; False when none is idle."""
        oldest: _Conn | None = None
        for idle in self._idle.values():
            if idle:
                c = next(iter(idle))
                if oldest is None or c.idle_since < oldest.idle_since:
                    oldest = c
        if oldest is None:
            return False
        del self._idle[oldest.key][oldest]
        self._discard(oldest)
        return True

    def _wake(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    def _sweep(self) -> None:
        self._sweeper = None
        cut = self.loop.time() - KEEPALIVE_S
        left = False
        for idle in self._idle.values():
            for conn in [c for c in idle if c.idle_since <= cut]:
                del idle[conn]
                self._discard(conn)
            left = left or bool(idle)
        if left and not self.closed:
            self._sweeper = self.loop.call_later(KEEPALIVE_S / 2, self._sweep)


_pools: dict[asyncio.AbstractEventLoop, Pool] = {}
T = TypeVar("T")


def per_loop(store: dict[asyncio.AbstractEventLoop, T], make: Callable[[asyncio.AbstractEventLoop], T]) -> T:
    """The running event loop's object in ``store`` (one with a ``closed`` attribute): ``make(loop)`` on
    first use or when the one kept is closed; the entries of closed loops are dropped then."""
    loop = asyncio.get_running_loop()
    obj = store.get(loop)
    if obj is None or obj.closed:  # type: ignore[attr-defined]
        for other in [lp for lp in store if lp.is_closed()]:
            del store[other]
        obj = store[loop] = make(loop)
    return obj


def shared_pool(limit: int) -> Pool:
    """This event loop's pool (created on first use, with ``limit``)."""
    return per_loop(_pools, lambda loop: Pool(limit, loop))


def close_shared_pool() -> None:
    """Close this event loop's pool, if it has one."""
    p = _pools.pop(asyncio.get_running_loop(), None)
    if p is not None:
        p.close()
