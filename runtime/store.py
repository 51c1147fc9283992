"""Offloading of large history texts to Ray's object store.

A history entry whose text is larger than the run's offload threshold is put in the object store by
the long-lived sink actor, so that the object is *owned* by the sink and outlives the agent that
produced the text. (Ray ≥ 2.56 removed ``ray.put(..., _owner=actor)``, so the agent cannot put it on
the sink's behalf: it sends the text to the sink one-way and coalesced, the sink puts it, keeps the
reference in its :class:`RefStore` and sends the reference back; only then does the agent route the
message on.) The message carries ``{"agent", "ref", "bytes", "preview"}`` instead of the text; ``ref``
is the ``ObjectRef`` itself, and Ray's reference counting keeps the object alive while any message
holds it. The sink drops its own reference as soon as the row's output line is written, so nothing a
row put in the store outlives the row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Sequence
from typing import Any

import ray

PREVIEW_CHARS = 64


def needs_offload(text: str | None, threshold: int) -> int:
    """The UTF-8 size of ``text`` when it is larger than ``threshold`` bytes (offload it), else 0."""
    if text is None or threshold < 0 or len(text) <= threshold // 4:   # at most 4 bytes per character
        return 0
    size = len(text.encode("utf-8"))
    return size if size > threshold else 0


def offloaded_entry(agent: str, text: str, size: int, ref: Any) -> dict:
    """The history entry that replaces an offloaded text."""
    return {"agent": agent, "ref": ref, "bytes": size, "preview": text[:PREVIEW_CHARS]}


async def fetch_texts(history: Sequence[dict], need: str) -> list[str | None]:
    """Texts of ``history`` for ``need`` ("all", "last", "none"), fetching offloaded ones concurrently."""
    n = len(history)
    texts: list[str | None] = [None] * n
    lo = 0 if need == "all" else (n - 1 if need == "last" else n)
    pending: list[tuple[int, Any]] = []
    for i in range(max(lo, 0), n):
        entry = history[i]
        if "text" in entry:
            texts[i] = entry["text"]
        else:
            pending.append((i, entry["ref"]))
    if pending:
        values = await asyncio.gather(*(ref for _, ref in pending))
        for (i, _), value in zip(pending, values, strict=True):
            texts[i] = value
    if need != "all":  # inline texts are free to read: give them to the engine anyway
        for i in range(lo):
            texts[i] = history[i].get("text")
    return texts


def refs_of(history: Sequence[dict]) -> list:
    """The ObjectRefs held by a message's history."""
    return [e["ref"] for e in history if "ref" in e]


class RefStore:
    """The run's offloaded texts, held per row until the row's output is written.

    It lives inside the sink actor (long-lived, and the one that knows when a row is written), so
    freeing costs no message. ``free`` drops a written row's references (Ray frees an object once no
    message holds it any more); a late ``put`` for a row freed less than a minute ago is not held.
    """

    def __init__(self) -> None:
        self._refs: dict[Hashable, list] = {}
        self._freed: dict[Hashable, float] = {}
        self.n_refs = 0
        self.total_freed = 0

    def put(self, key: Hashable, text: str) -> Any:
        """Put ``text`` in the object store (owned by the calling process) and hold it for row ``key``."""
        ref = ray.put(text)
        if key not in self._freed:
            self._refs.setdefault(key, []).append(ref)
            self.n_refs += 1
        return ref

    def free(self, keys: list[Hashable]) -> None:
        """Drop the references of rows whose output has been written."""
        now = time.monotonic()
        for key in keys:
            refs = self._refs.pop(key, None)
            if refs:
                self.n_refs -= len(refs)
                self.total_freed += len(refs)
            self._freed[key] = now
        if len(self._freed) > 10000:   # forget rows freed more than a minute ago
            self._freed = {k: t for k, t in self._freed.items() if now - t < 60.0}

    def stats(self) -> dict:
        """Rows and references currently held, and references freed so far."""
        return {"rows": len(self._refs), "refs": self.n_refs, "freed": self.total_freed}
