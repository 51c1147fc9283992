"""Output formats of ``mxc run --output``: JSON Lines (``.jsonl``, any other name), compressed JSON Lines
(``.jsonl.zst``, ``.jsonl.gz``) and Parquet (``.parquet``).

The sink always writes JSON Lines, durably, one whole line per row (sink.py): for JSON Lines that file
is the output. A compressed or Parquet output cannot be appended to after a crash, so for those the
sink writes a **journal**, ``OUT.journal.jsonl``, and :func:`finalize` turns it into ``OUT`` when the
run completes: the rows of an earlier ``OUT`` (``--resume``) then the journal's rows that ``OUT`` does
not hold, written to ``OUT.tmp``, fsynced and renamed over ``OUT``; then the journal is removed. A crash
at any point leaves the journal and ``OUT`` as they were or ``OUT`` complete: ``--resume`` skips the
ids of both, and the merge's dedup keeps every row once even if it ran before. ``--retry-errors``
removes the error rows from the journal, then from ``OUT`` (:func:`drop_status`), each file replaced
whole in the same way, before the run starts.

Parquet: each output field is a column whose type is inferred over the whole output (ints and floats
make floats); a field whose values have no common Arrow type (a string in one row, a number in
another) is stored as JSON text, and its name is listed in the schema metadata
``matrixlang.json_columns``. ``_meta`` is a struct of fixed type (:data:`META_FIELDS`), its ``usage`` a
map from agent name to counts.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..semantics.message import OK

JOURNAL_SUFFIX = ".journal.jsonl"
CHUNK_ROWS = 8192            # rows per Parquet row group and per inference chunk
JSON_COLUMNS_KEY = b"matrixlang.json_columns"


class OutputError(ValueError):
    """The output cannot be read or finalized; the message says which file and why."""


def output_format(path: str) -> str:
    """``parquet``, ``zst``, ``gz`` or ``jsonl`` (anything else), from the file name."""
    for suffix, fmt in ((".parquet", "parquet"), (".zst", "zst"), (".gz", "gz")):
        if path.endswith(suffix):
            return fmt
    return "jsonl"


def journal_path(path: str) -> str:
    """The file the sink appends to: the output itself for JSON Lines, else ``OUT.journal.jsonl``."""
    return path if output_format(path) == "jsonl" else path + JOURNAL_SUFFIX


# ---- reading finished outputs ----------------------------------------------------------------------

def iter_rows(path: str) -> Iterator[dict]:
    """The rows of a finished output (any format), streamed; OutputError when it cannot be read."""
    fmt = output_format(path)
    try:
        if fmt == "parquet":
            yield from _parquet_rows(path)
            return
        with _open_text(path, fmt) as f:
            for raw in f:
                if raw.strip():
                    yield json.loads(raw)
    except (OSError, EOFError, ValueError) as e:
        raise OutputError(f"output {path!r} cannot be read: {e}") from None


def read_metas(path: str) -> Iterator[dict]:
    """The ``_meta`` of every row of a finished output (Parquet: only that column is read)."""
    if output_format(path) != "parquet":
        for row in iter_rows(path):
            meta = row.get("_meta") if isinstance(row, dict) else None
            if isinstance(meta, dict):
                yield meta
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS, columns=["_meta"]):
            for row in batch.to_pylist():
                if isinstance(row.get("_meta"), dict):
                    yield row["_meta"]
    except (OSError, pa.ArrowException) as e:
        raise OutputError(f"output {path!r} cannot be read: {e}") from None


def _open_text(path: str, fmt: str) -> Any:
    if fmt == "gz":
        return gzip.open(path, "rb")
    if fmt == "zst":
        import io

        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))  # noqa: SIM115
    return open(path, "rb")  # noqa: SIM115


def _parquet_rows(path: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    meta = pf.schema_arrow.metadata or {}
    as_json = set(json.loads(meta.get(JSON_COLUMNS_KEY, b"[]")))
    for batch in pf.iter_batches(batch_size=CHUNK_ROWS):
        for row in batch.to_pylist():
            for name in as_json:
                if row.get(name) is not None:
                    row[name] = json.loads(row[name])
            m = row.get("_meta")
            if isinstance(m, dict):
                if isinstance(m.get("usage"), list):
                    m["usage"] = dict(m["usage"])
                if m.get("trial") is None:
                    m.pop("trial", None)
            yield row


# ---- finalizing ------------------------------------------------------------------------------------

def finalize(path: str, *, fsync: bool = True, lock_wait_s: float = 30.0) -> int:
    """Merge an earlier output at ``path`` (if any) and the journal into ``path`` (format by name),
    atomically; remove the journal. Returns the rows in the output. OutputError on failure (the
    journal and the earlier output are then untouched)."""
    from ..actors.sink import meta_key

    journal = journal_path(path)
    if journal == path:
        raise OutputError(f"{path!r} is JSON Lines: it is its own journal")
    prior = path if os.path.exists(path) else None
    seen: set = set()
    if prior is not None:
        for meta in read_metas(prior):
            seen.add(meta_key(meta))

    def rows() -> Iterator[dict]:
        if prior is not None:
            yield from iter_rows(prior)
        if os.path.exists(journal):
            taken: set = set()
            with open(journal, "rb") as f:
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break                        # torn: never completed
                    try:
                        row = json.loads(raw)
                        key = meta_key(row["_meta"])
                    except (ValueError, KeyError, TypeError, AttributeError):
                        continue
                    if key in seen or key in taken:
                        continue
                    taken.add(key)
                    yield row

    with _journal_locked(journal, lock_wait_s):
        try:
            n = _replace(path, rows, fsync)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(journal)
        except OSError as e:
            raise OutputError(f"the output {path!r} cannot be written: {e.strerror or e}; the rows are in "
                              f"{journal!r}, and --resume writes the output again") from None
    return n


def drop_status(path: str, status: str, *, fsync: bool = True, lock_wait_s: float = 30.0) -> int:
    """Remove the rows with ``_meta.status == status`` from an output, so that ``--resume`` runs them
    again (``--retry-errors``). Returns how many rows (distinct ids) were removed.

    JSON Lines: :func:`~..actors.sink.drop_rows` on the file. A Parquet or compressed output: first its
    journal (drop_rows: a copy, fsynced, renamed over it, under its lock), then, when it holds such rows,
    the finished output (rewritten in its format to ``OUT.tmp``, fsynced, renamed over it, under the
    journal's lock as :func:`finalize`). Each step replaces one file whole and only removes rows, so
    after a crash anywhere each file still holds every row at most once and ``finalize``'s dedup keeps
    it once in the output: an error row is either gone (the next run runs it) or still in a file (a
    plain ``--resume`` counts it done; ``--retry-errors`` again removes it).
    OSError, OutputLocked (another run writes the output) or OutputError (the output cannot be read)."""
    from ..actors.sink import drop_rows, meta_key

    journal = journal_path(path)
    if journal == path:
        return drop_rows(path, status, lock_wait_s)
    keys: set = set()
    if os.path.exists(journal):
        drop_rows(journal, status, lock_wait_s, keys)
    if not os.path.exists(path):
        return len(keys)

    def rows() -> Iterator[dict]:
        for row in iter_rows(path):
            if (row.get("_meta") or {}).get("status") != status:
                yield row

    with _journal_locked(journal, lock_wait_s):
        drop = {meta_key(m) for m in read_metas(path) if m.get("status") == status}
        if drop:
            _replace(path, rows, fsync)
    return len(keys | drop)


def _replace(path: str, rows: Callable[[], Iterator[dict]], fsync: bool) -> int:
    """Write ``rows`` (called once per pass) in ``path``'s format to ``path.tmp``, fsync it and rename it
    over ``path``. Returns the rows written."""
    tmp = path + ".tmp"
    fmt = output_format(path)
    try:
        n = (_write_parquet if fmt == "parquet" else _write_lines)(tmp, rows, fmt)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return n


@contextlib.contextmanager
def _journal_locked(journal: str, wait_s: float = 30.0) -> Iterator[None]:
    """Hold the journal's lock while the output is rewritten (a run's sink may still be exiting; a run
    writing it now makes this an OutputError); nothing to hold when there is no journal."""
    from ..actors.sink import OutputLocked, _lock

    try:
        fd = os.open(journal, os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    try:
        _lock(fd, journal, wait_s)              # closes fd when it gives up
    except OutputLocked as e:
        raise OutputError(str(e)) from None
    try:
        yield
    finally:
        os.close(fd)


def _write_lines(tmp: str, rows: Callable[[], Iterator[dict]], fmt: str) -> int:
    from ..actors.sink import encode_line

    n = 0
    if fmt == "zst":
        import zstandard

        with open(tmp, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as out:
            for row in rows():
                out.write(encode_line(row))
                n += 1
        return n
    with gzip.open(tmp, "wb") as out:
        for row in rows():
            out.write(encode_line(row))
            n += 1
    return n


def meta_type() -> Any:
    """The Arrow type of ``_meta`` (the id's type is chosen per output: see :func:`_write_parquet`)."""
    import pyarrow as pa

    counts = pa.struct([("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("calls", pa.int64())])
    return [
        ("position", pa.int64()), ("id_from", pa.string()), ("status", pa.string()),
        ("reason", pa.string()), ("detail", pa.string()), ("steps", pa.int64()), ("attempt", pa.int64()),
        ("trial", pa.int64()), ("usage", pa.map_(pa.string(), counts)),
        ("timing", pa.struct([("admitted", pa.float64()), ("finished", pa.float64()),
                              ("elapsed_s", pa.float64())])),
        ("workflow", pa.struct([("name", pa.string()), ("hash", pa.string())])),
    ]


META_FIELDS = ("id", "position", "id_from", "status", "reason", "detail", "steps", "attempt", "trial",
               "usage", "timing", "workflow")
"""The fields of ``_meta`` in a Parquet output (``id`` is int64 when every id is an integer, else text)."""


def _write_parquet(tmp: str, rows: Callable[[], Iterator[dict]], fmt: str) -> int:
    """Two streamed passes: infer each column's type, then write row groups of :data:`CHUNK_ROWS`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, Any] = {}       # name -> unified Arrow type (None: JSON text)
    int_ids = True
    for chunk in _chunks(rows()):
        for name in dict.fromkeys(k for r in chunk for k in r if k != "_meta"):   # in field order
            if name in columns and columns[name] is None:
                continue
            try:
                t = pa.array([r.get(name) for r in chunk]).type
                old = columns.get(name)
                columns[name] = t if old is None and name not in columns else _unify(old, t)
            except (pa.ArrowException, ValueError, TypeError, OverflowError):
                columns[name] = None
        int_ids = int_ids and all(isinstance(r["_meta"].get("id"), int) for r in chunk)
    id_type = pa.int64() if int_ids else pa.string()
    meta_t = pa.struct([("id", id_type), *meta_type()])
    names = [k for k in columns]
    as_json = [k for k in names if columns[k] is None]
    fields = [pa.field(k, pa.string() if columns[k] is None or pa.types.is_null(columns[k]) else columns[k])
              for k in names]
    schema = pa.schema([*fields, pa.field("_meta", meta_t)],
                       metadata={JSON_COLUMNS_KEY: json.dumps(as_json).encode()})
    n = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
        for chunk in _chunks(rows()):
            arrays = []
            for f in fields:
                vals = [r.get(f.name) for r in chunk]
                if f.name in as_json:
                    vals = [None if v is None else json.dumps(v, ensure_ascii=False) for v in vals]
                arrays.append(pa.array(vals, type=f.type))
            metas = [_meta_value(r["_meta"], int_ids) for r in chunk]
            arrays.append(pa.array(metas, type=meta_t))
            w.write_table(pa.Table.from_arrays(arrays, schema=schema))
            n += len(chunk)
    return n


def _meta_value(meta: dict, int_ids: bool) -> dict:
    m = {k: meta.get(k) for k in META_FIELDS}
    if not int_ids and m["id"] is not None:
        m["id"] = m["id"] if isinstance(m["id"], str) else json.dumps(m["id"])
    return m


def _unify(a: Any, b: Any) -> Any:
    import pyarrow as pa

    if a is None or pa.types.is_null(a):
        return b
    if pa.types.is_null(b) or a == b:
        return a
    return pa.unify_schemas([pa.schema([("x", a)]), pa.schema([("x", b)])],
                            promote_options="permissive").field("x").type


def _chunks(rows: Iterator[dict]) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for r in rows:
        chunk.append(r)
        if len(chunk) >= CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def count_ok(metas: Iterator[dict]) -> int:
    """Rows with status ok among ``metas``."""
    return sum(1 for m in metas if m.get("status") == OK)


def output_exists(path: str) -> bool:
    """Whether the output or its journal holds anything."""
    return any(Path(p).is_file() and Path(p).stat().st_size > 0 for p in {path, journal_path(path)})
