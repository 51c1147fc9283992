"""The sink: the one writer of the output file, and the driver's source of completions.

Output is append-only JSON Lines, one whole line per row, written with one ``write`` per delivered
batch. A row counts as written, and its completion goes to the driver, only once its line is in the
file: a write that fails (a full disk) is cut back to the last whole line and stops the run
(``failure``), and ``--resume`` finishes it. Rows are deduplicated by id (the first write wins), which
makes re-runs after a crash exactly-once: a re-admitted row that was in fact finished, or a row
already written by an earlier run (``--resume``), is dropped. The sink also owns the run's offloaded history texts (``store.RefStore``): it puts
them in the object store, hands their references to agents that ask, and frees a row's texts as soon
as its line is written. It queues one completion per row for the driver,
which long-polls :meth:`Sink.poll`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import ray

from ..control.cluster import Handles, Topology, actor_info, tune_gc
from ..data.outputs import read_metas
from ..semantics.message import ID_DUPLICATE, ID_POSITION, id_key, position_key
from ..transport.outbox import Outbox, spawn, unpack
from ..transport.protocol import FETCHED
from ..transport.store import RefStore


def scan_output(path: str | Path, *, repair: bool = True, ok: list[int] | None = None) -> tuple[set, int]:
    """Ids of the rows already in an output file, read as a stream.

    A torn last line (a crash mid-write: no final newline, or not valid JSON) is cut off when
    ``repair``. Returns ``(ids, bytes cut)``; ``ok[0]`` is raised by the rows with status ok. Lines that
    are not output rows are ignored.
    """
    ids: set = set()
    p = Path(path)
    if not p.exists():
        return ids, 0
    good_end = 0
    with p.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break                       # torn: the write of this line never completed
            good_end += len(raw)
            try:
                obj = json.loads(raw)
            except ValueError:
                continue                    # a broken whole line: not an output row
            meta = obj.get("_meta") if isinstance(obj, dict) else None
            if isinstance(meta, dict) and "id" in meta:
                key = meta_key(meta)
                if ok is not None and meta.get("status") == "ok" and key not in ids:
                    ok[0] += 1
                ids.add(key)
    size = p.stat().st_size
    cut = size - good_end
    if cut and repair:
        with p.open("r+b") as f:
            f.truncate(good_end)
    return ids, cut


def drop_rows(path: str | Path, status: str, lock_wait_s: float = 30.0, keys: set | None = None) -> int:
    """Remove the output rows with ``_meta.status == status`` from a JSON Lines output (or journal), so
    that ``--resume`` runs them again (``--retry-errors``): a streamed copy, fsynced, then renamed over
    the file, under the file's lock. A torn last line is dropped too. Returns the number of rows
    removed; their keys are added to ``keys`` when given."""
    p = Path(path)
    if not p.exists():
        return 0
    tmp = p.with_name(p.name + ".retry.tmp")
    dropped = 0
    fd = os.open(p, os.O_RDWR)
    _lock(fd, str(p), lock_wait_s)             # (a previous run's sink may still be exiting); closes fd on failure
    try:
        with p.open("rb") as src, tmp.open("wb") as dst:
            for raw in src:
                if not raw.endswith(b"\n"):
                    break                           # torn: never completed
                try:
                    meta = json.loads(raw).get("_meta")
                except (ValueError, AttributeError):
                    meta = None
                if isinstance(meta, dict) and meta.get("status") == status:
                    dropped += 1
                    if keys is not None:
                        keys.add(meta_key(meta))
                    continue
                dst.write(raw)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, p)
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)
    return dropped


def encode_line(row: dict) -> bytes:
    """One output line: JSON, UTF-8, newline-terminated. A number that JSON cannot hold (NaN, ±Infinity)
    is written as ``null``; a string holding a lone surrogate (a model's reply may) is written with
    ``\\uXXXX`` escapes, so every line is valid JSON and valid UTF-8."""
    try:
        text = json.dumps(row, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:
        text = json.dumps(_finite(row), ensure_ascii=False, allow_nan=False, default=str)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(json.loads(text), ensure_ascii=True).encode("ascii") + b"\n"


def _finite(v: Any) -> Any:
    """``v`` with NaN and ±Infinity floats replaced by None."""
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


row_key = id_key


def meta_key(meta: dict) -> Hashable:
    """The dedup key of an output row from its ``_meta`` (as :attr:`Message.key`): its own id, or its
    position when its id is the position or a duplicate (rows written before ``id_from``: the id)."""
    if meta.get("id_from") in (ID_POSITION, ID_DUPLICATE) and isinstance(meta.get("position"), int):
        trial = meta.get("trial")
        return position_key(meta["position"], trial if isinstance(trial, int) else None)
    return id_key(meta.get("id"))


def item_key(item: Any) -> Hashable:
    """The row key of an outbox item: a message's row, or the key an item tuple starts with."""
    return item[0] if isinstance(item, tuple) else item.key


def _lock(fd: int, path: str, wait_s: float) -> None:
    """Take an exclusive flock on the output, waiting up to ``wait_s`` for a previous writer to die."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise OutputLocked(f"output {path!r} is being written by another run") from None
            time.sleep(0.1)


class OutputLocked(RuntimeError):
    """Another process holds the output file's lock."""


def write_failure(path: str, exc: OSError) -> str:
    """The one-line reason a run stopped because its output could not be written."""
    code = errno.errorcode.get(exc.errno or 0, "")
    what = exc.strerror or str(exc)
    return f"cannot write the output {path!r}: {what}" + (f" ({code})" if code else "")


@ray.remote(num_cpus=0, max_restarts=-1)
class Sink:
    """Appends output rows; dedups by id; frees offloaded texts; reports completions."""

    def __init__(self, path: str, mode: str, topo: Topology, lock_wait_s: float = 30.0,
                 prior: str | None = None):
        """``path``: the JSON Lines file appended to (the output, or a journal: outputs.py); ``prior``:
        a finished output whose rows count as written too (a Parquet or compressed output, --resume)."""
        tune_gc()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _lock(self._fd, path, lock_wait_s)    # one writer per output file, even across runs
        ctx = ray.get_runtime_context()
        ok = [0]
        if ctx.was_current_actor_reconstructed or mode == "append":
            self._written, self.cut_bytes = scan_output(path, ok=ok)
        else:  # "new": the driver has checked --overwrite
            os.ftruncate(self._fd, 0)
            self._written, self.cut_bytes = set(), 0
        if prior is not None and os.path.exists(prior):
            for meta in read_metas(prior):
                key = meta_key(meta)
                if key not in self._written:
                    ok[0] += meta.get("status") == "ok"
                    self._written.add(key)
        self.ok_done = ok[0]                         # ok rows in the output when the sink started
        self._path = path
        self._size = os.fstat(self._fd).st_size     # the end of the last whole line written
        self.failure: str | None = None              # set when the output cannot be written any more
        self.refs = RefStore()
        self._handles = Handles(topo)
        self._outbox: Outbox | None = None
        self._tasks: set[asyncio.Task] = set()
        self._completions: dict[int, list] = {}     # driver shard -> its rows written, not yet polled
        self._event: asyncio.Event | None = None
        self.duplicates = 0
        self.lines = 0

    async def deliver(self, batch: bytes | list[tuple[Hashable, bytes, dict]]) -> int:
        """Write rows: items are ``(key, line, info)`` (``line`` from :func:`encode_line`); ``info`` goes to
        the driver's completions once the line is in the file."""
        batch = unpack(batch)
        if self.failure is not None:
            return 0                           # the output cannot be written: the run is stopping
        keys: dict[Hashable, dict] = {}         # key -> info, in batch order
        lines: list[bytes] = []
        for key, line, info in batch:
            if key in self._written or key in keys:
                self.duplicates += 1
                continue
            keys[key] = info
            lines.append(line)
        if keys and self._append(b"".join(lines)):
            self._written.update(keys)
            self.lines += len(keys)
            self.refs.free(list(keys))
            for key, info in keys.items():
                self._completions.setdefault(info.get("driver", 0), []).append((key, info))
            self._wake()
        return 0

    def _append(self, data: bytes) -> bool:
        """Append whole lines; on failure cut the file back to its last whole line and record why."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            self.failure = write_failure(self._path, e)
            self._wake()
            return False
        self._size += len(data)
        return True

    def offload(self, batch: bytes | list[tuple[Hashable, str, str]]) -> int:
        """Put offloaded texts in the object store, owned here: items are ``(row_key, key, text)``."""
        batch = unpack(batch)
        for row, key, text in batch:
            self.refs.put(row, key, text)
        return 0

    async def fetch(self, batch: bytes | list[tuple[str, int, Hashable, list[str]]]) -> int:
        """Requests for offloaded texts: items are ``(reply_to, req_id, row_key, keys)``; each is answered one-way,
        once every key is known, to the agent's ``fetched`` method as ``(req_id, [text] | None)``: the
        sink reads the objects from its node's object store (a text over Ray's inline limit travels
        back through the object store again)."""
        batch = unpack(batch)
        for reply_to, req_id, row, keys in batch:
            spawn(self._answer(reply_to, req_id, row, keys), self._tasks)
        return 0

    async def _answer(self, reply_to: str, req_id: int, row: Hashable, keys: list[str]) -> None:
        try:
            texts = list(await asyncio.gather(*await self.refs.refs(row, keys)))
        except (asyncio.TimeoutError, ray.exceptions.RayError):
            texts = None                       # a put that never came: the agent re-runs the row
        if self._outbox is None:
            self._outbox = Outbox()
        try:
            handle = self._handles.get(reply_to)
        except ValueError:
            return
        self._outbox.send(reply_to, handle, (req_id, texts), method=FETCHED)

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()

    async def poll(self, timeout: float = 0.25, driver: int = 0) -> tuple[list[tuple[Hashable, dict]], str | None]:
        """Completions of ``driver``'s rows since its last poll, and the write failure if the output
        cannot be written; waits up to ``timeout`` seconds for at least one completion."""
        if not self._completions.get(driver) and self.failure is None:
            if self._event is None:
                self._event = asyncio.Event()
            self._event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)
        done = self._completions.pop(driver, [])
        return done, self.failure

    def done_ids(self) -> tuple[list[Hashable], int, int]:
        """Ids already in the output when the sink started (``--resume``), torn bytes cut, and how many
        of those rows have status ok."""
        return list(self._written), self.cut_bytes, self.ok_done

    def written(self, keys: list[Hashable]) -> list[Hashable]:
        """Which of ``keys`` are in the output."""
        return [k for k in keys if k in self._written]

    def infos(self, keys: list[Hashable]) -> list[tuple[Hashable, dict]]:
        """Completion infos of written rows, read back from the file (after a sink restart lost the
        completions the driver had not polled yet)."""
        want = {k for k in keys if k in self._written}
        out = []
        with open(self._path, "rb") as f:
            for raw in f:
                try:
                    meta = json.loads(raw)["_meta"]
                except (ValueError, KeyError, TypeError):
                    continue
                key = meta_key(meta)
                if key in want:
                    want.discard(key)
                    usage = (meta.get("usage") or {}).values()
                    out.append((key, {
                        "status": meta.get("status"), "reason": meta.get("reason"),
                        "attempt": meta.get("attempt", 0), "steps": meta.get("steps", 0),
                        "prompt_tokens": sum(u.get("prompt_tokens", 0) for u in usage),
                        "completion_tokens": sum(u.get("completion_tokens", 0) for u in usage),
                        "finished": (meta.get("timing") or {}).get("finished")}))
        return out

    def close(self) -> dict:
        """Fsync the output and check its size against what was written. Returns counters, the
        offloaded references still held and freed, and ``failure`` (None when every line is on disk)."""
        try:
            os.fsync(self._fd)
            size = os.fstat(self._fd).st_size
            if size != self._size and self.failure is None:
                self.failure = (f"the output {self._path!r} is {size} bytes, {self._size} were written: "
                                "another process changed it")
        except OSError as e:
            self.failure = self.failure or write_failure(self._path, e)
        return {"lines": self.lines, "duplicates": self.duplicates, "cut_bytes": self.cut_bytes,
                "offload": self.refs.stats(), "failure": self.failure}

    def ping(self) -> tuple[str, int, str]:
        """Liveness probe: (incarnation, pid, node id)."""
        return actor_info()
