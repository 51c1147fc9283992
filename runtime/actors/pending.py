"""Requests of an actor that await a one-way answer (a sim service's reply, the sink's texts)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any


class Pending:
    """A future per request id, failed with TimeoutError at its deadline.

    One sweeper task enforces every deadline (cheaper than a timer task per call). Request ids are
    distinct per incarnation of the actor, so a late answer to a former incarnation finds nothing.
    """

    def __init__(self) -> None:
        self._waiting: dict[int, asyncio.Future] = {}      # req_id -> reply future
        self._deadlines: dict[int, float] = {}              # req_id -> monotonic deadline
        self._sweeper: asyncio.Task | None = None
        self._next_req = int.from_bytes(os.urandom(5), "big") << 24

    def new_id(self) -> int:
        """A fresh request id."""
        req_id = self._next_req
        self._next_req += 1
        return req_id

    def expect(self, req_id: int, timeout_s: float) -> asyncio.Future:
        """A future for the answer to ``req_id``, failed with TimeoutError after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        fut = self._waiting[req_id] = loop.create_future()
        self._deadlines[req_id] = time.monotonic() + timeout_s
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())
        return fut

    def resolve(self, req_id: int, value: Any) -> None:
        """The answer to ``req_id`` came (ignored when it is no longer awaited)."""
        self._deadlines.pop(req_id, None)
        fut = self._waiting.pop(req_id, None)
        if fut is not None and not fut.done():
            fut.set_result(value)

    def fail(self, req_id: int, exc: BaseException) -> None:
        """``req_id`` will not be answered: its awaiter gets ``exc``."""
        self._deadlines.pop(req_id, None)
        fut = self._waiting.pop(req_id, None)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    async def _sweep(self) -> None:
        while self._waiting:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            expired = [r for r, d in self._deadlines.items() if d <= now]
            for req_id in expired:
                self.fail(req_id, asyncio.TimeoutError())
