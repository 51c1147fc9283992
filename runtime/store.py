"""Offloading of large history texts to Ray's object store.

A history entry whose text is larger than the run's offload threshold is put in the object store with
``ray.put(text, _owner=store)``: the long-lived :class:`Store` actor owns it, so it outlives the agent
that produced it. The message then carries ``{"agent", "ref", "bytes", "preview"}`` instead of the text
(``ref`` is the ``ObjectRef`` itself; Ray's reference counting tracks every message holding it), and
the agent hands the reference to the store (``deliver``), which keeps it alive until the sink has
written the row's output and sends ``free``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Sequence
from typing import Any

import ray

from .cluster import actor_info

PREVIEW_CHARS = 64


def offload_entry(entry: dict, threshold: int, owner: Any) -> tuple[dict, Any | None]:
    """Offload the text of a history entry when its UTF-8 size exceeds ``threshold`` bytes.

    Returns the (possibly replaced) entry and the new ObjectRef (or None when kept inline).
    """
    text = entry.get("text")
    if text is None or threshold < 0:
        return entry, None
    if len(text) <= threshold // 4:          # cheap lower bound: at most 4 bytes per character
        return entry, None
    size = len(text.encode("utf-8"))
    if size <= threshold:
        return entry, None
    ref = ray.put(text, _owner=owner)
    return {"agent": entry["agent"], "ref": ref, "bytes": size, "preview": text[:PREVIEW_CHARS]}, ref


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


@ray.remote(num_cpus=0)
class Store:
    """Owner of the run's offloaded texts: holds their references per row until ``free``."""

    def __init__(self) -> None:
        self._refs: dict[Hashable, list] = {}
        self._freed: dict[Hashable, float] = {}   # recently freed rows: late holds are dropped
        self._n_refs = 0
        self._total_freed = 0

    def deliver(self, batch: list[tuple[Hashable, list]]) -> int:
        """Hold references: ``batch`` items are ``(row_key, [ObjectRef, ...])``. Returns rows held."""
        for key, refs in batch:
            if key in self._freed:
                continue
            self._refs.setdefault(key, []).extend(refs)
            self._n_refs += len(refs)
        return len(self._refs)

    def free(self, keys: list[Hashable]) -> int:
        """Drop the references of rows whose output has been written."""
        now = time.monotonic()
        for key in keys:
            refs = self._refs.pop(key, None)
            if refs:
                self._n_refs -= len(refs)
                self._total_freed += len(refs)
            self._freed[key] = now
        if len(self._freed) > 10000:   # forget rows freed more than a minute ago
            self._freed = {k: t for k, t in self._freed.items() if now - t < 60.0}
        return len(self._refs)

    def stats(self) -> dict:
        """Rows and references currently held, and references freed so far."""
        return {"rows": len(self._refs), "refs": self._n_refs, "freed": self._total_freed}

    def ping(self) -> tuple[str, int, str]:
        """Liveness probe: (incarnation, pid, node id)."""
        return actor_info()
