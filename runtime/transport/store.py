"""Offloading of large history texts to Ray's object store, owned by the long-lived sink actor.

A history entry whose text is larger than the run's offload threshold (UTF-8 bytes) leaves the
message: an agent sends ``(row, key, text)`` to the sink one-way and coalesced (``key`` is the text's
content hash) and routes the message on at once carrying ``{"agent", "ref": key (hex), "bytes",
"preview"}``. The newest entry rides inline for one more hop when the next step reads history (it
is what the next step surely reads); it is offloaded by the agent that runs that step. The sink ``ray.put``s the text, so the object is owned by the sink and outlives
the agent (Ray ≥ 2.56 removed ``ray.put(..., _owner=actor)``, so an agent cannot create an object on
the sink's behalf), and keeps the reference under the key in its :class:`RefStore`.

An agent that needs a text it has not seen asks the sink for the missing keys (again one-way: the
sink answers when the keys are known, as the put may still be on its way); the sink reads them from
its object store and sends them back (one round trip; a text above Ray's inline limit travels
through the object store). Each agent keeps the texts it produced or fetched in a bounded
:class:`TextCache`, so in a conversation each step fetches only what is new to it.

Messages carry keys, not ``ObjectRef``s: a reference inside a message would make every hop register
borrowers with the owner (measured here: 19 references per message cut a relay from 8,600 to 1,850
hops/s). The sink drops a row's references once its output line is written; Ray then frees the
objects, so nothing a row offloaded outlives the row.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

import ray

PREVIEW_CHARS = 64


def needs_offload(text: str | None, threshold: int) -> int:
    """The UTF-8 size of ``text`` when it is larger than ``threshold`` bytes (offload it), else 0."""
    if text is None or threshold < 0 or len(text) <= threshold // 4:   # at most 4 bytes per character
        return 0
    size = len(text.encode("utf-8"))
    return size if size > threshold else 0


def text_key(text: str) -> str:
    """The store key of a text: its BLAKE2b-96 digest (hex). Content addressing lets every agent that
    has seen a text (inline) know its key without asking anyone."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def offloaded_entry(agent: str, text: str, size: int, key: str) -> dict:
    """The history entry that replaces an offloaded text."""
    return {"agent": agent, "ref": key, "bytes": size, "preview": text[:PREVIEW_CHARS]}


class TextCache:
    """An agent's LRU cache of offloaded texts by key, bounded in characters."""

    def __init__(self, max_chars: int = 64 * 2**20) -> None:
        self._d: OrderedDict[str, str] = OrderedDict()
        self.max_chars, self.chars = max_chars, 0
        self.hits = self.misses = 0

    def get(self, key: str) -> str | None:
        text = self._d.get(key)
        if text is None:
            self.misses += 1
            return None
        self._d.move_to_end(key)
        self.hits += 1
        return text

    def put(self, key: str, text: str) -> None:
        if key in self._d:
            return
        self._d[key] = text
        self.chars += len(text)
        while self.chars > self.max_chars and self._d:
            _, old = self._d.popitem(last=False)
            self.chars -= len(old)


TextsFn = Callable[[list[str]], Awaitable[list[str]]]


async def fetch_texts(history: Sequence[dict], need: str, cache: TextCache, texts_of: TextsFn) -> list[str | None]:
    """Texts of ``history`` for ``need`` ("all", "last", "none"). Offloaded texts come from ``cache``,
    else from ``texts_of(keys)`` (the sink, which reads them from the object store)."""
    texts: list[str | None] = [e.get("text") for e in history]
    if None not in texts:          # every text inline: nothing to look up
        return texts
    n = len(history)
    lo = 0 if need == "all" else (n - 1 if need == "last" else n)
    missing: list[tuple[int, str]] = []
    for i in range(max(lo, 0), n):
        if texts[i] is None and "ref" in history[i]:
            key = history[i]["ref"]
            cached = cache.get(key)
            if cached is not None:
                texts[i] = cached
            else:
                missing.append((i, key))
    if missing:
        values = await texts_of([key for _, key in missing])
        for (i, key), value in zip(missing, values, strict=True):
            texts[i] = value
            cache.put(key, value)
    return texts


class RefStore:
    """The sink's side: references of offloaded texts by (row, key), held until the row is written.

    ``put`` stores a text (``ray.put`` in the sink: the sink owns it); ``refs`` gives the references of
    a row's keys, waiting for puts that have not arrived yet; ``free`` drops a written row's
    references. Keys are scoped by row, so rows with equal texts never free each other's objects. A
    late put for a row freed less than a minute ago is not kept.
    """

    def __init__(self) -> None:
        self._refs: dict[tuple[Hashable, str], Any] = {}
        self._rows: dict[Hashable, list[str]] = {}
        self._freed: dict[Hashable, float] = {}
        self._waiters: dict[tuple[Hashable, str], list[asyncio.Future]] = {}
        self.total_put = 0
        self.total_freed = 0

    def put(self, row: Hashable, key: str, text: str) -> None:
        if row in self._freed or (row, key) in self._refs:
            return
        ref = self._refs[(row, key)] = ray.put(text)
        self._rows.setdefault(row, []).append(key)
        self.total_put += 1
        for fut in self._waiters.pop((row, key), ()):
            if not fut.done():
                fut.set_result(ref)

    async def refs(self, row: Hashable, keys: Sequence[str], timeout_s: float = 30.0) -> list[Any]:
        """The references of a row's ``keys``; waits up to ``timeout_s`` for puts still on their way."""
        out: list[Any] = []
        for key in keys:
            ref = self._refs.get((row, key))
            if ref is None:
                fut = asyncio.get_running_loop().create_future()
                self._waiters.setdefault((row, key), []).append(fut)
                try:
                    ref = await asyncio.wait_for(fut, timeout_s)
                finally:
                    waiters = self._waiters.get((row, key))
                    if waiters is not None and fut in waiters:
                        waiters.remove(fut)
                        if not waiters:
                            del self._waiters[(row, key)]
            out.append(ref)
        return out

    def free(self, rows: Sequence[Hashable]) -> None:
        """Drop the references of rows whose output has been written."""
        now = time.monotonic()
        for row in rows:
            for key in self._rows.pop(row, ()):
                if self._refs.pop((row, key), None) is not None:
                    self.total_freed += 1
            self._freed[row] = now
        if len(self._freed) > 10000:   # forget rows freed more than a minute ago
            self._freed = {k: t for k, t in self._freed.items() if now - t < 60.0}

    def stats(self) -> dict:
        """Texts held now, put and freed so far."""
        return {"held": len(self._refs), "rows": len(self._rows), "put": self.total_put,
                "freed": self.total_freed}
