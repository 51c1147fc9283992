"""Finalizing a journal into Parquet and compressed JSON Lines, without Ray: column types inferred over
chunks, JSON text for mixed columns, `_meta` as a struct, the merge's dedup, a journal held by a writer."""

from __future__ import annotations

import fcntl
import json
import os

import pyarrow.parquet as pq
import pytest
from matrixlang.runtime.data import outputs
from matrixlang.runtime.data.outputs import OutputError, finalize, iter_rows, journal_path


def row(i: int, **fields) -> dict:
    meta = {"id": f"r{i}", "position": i, "id_from": "field", "status": "ok" if i % 2 else "failed",
            "reason": None if i % 2 else "no_agreement", "detail": None, "steps": 2, "attempt": 0,
            "usage": {f"agent{i % 3}": {"prompt_tokens": i, "completion_tokens": 1, "calls": 1}},
            "timing": {"admitted": 1.0, "finished": 2.0, "elapsed_s": 1.0},
            "workflow": {"name": "w", "hash": "sha256:x"}}
    return {**fields, "_meta": meta}


def write_journal(path: str, rows: list[dict], torn: bool = False) -> None:
    with open(journal_path(path), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows) + ('{"torn": ' if torn else ""))


def test_parquet_types_over_chunks_json_text_for_mixed_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "CHUNK_ROWS", 4)        # several chunks, types that change between them
    out = str(tmp_path / "out.parquet")
    rows = [row(i, n=i if i < 6 else i + 0.5, mixed=("text" if i == 3 else [i]), maybe=None if i < 9 else "late",
                obj={"a": i} if i < 5 else {"a": i, "b": "x"}) for i in range(10)]
    write_journal(out, rows, torn=True)
    assert finalize(out) == 10 and not os.path.exists(journal_path(out))
    f = pq.ParquetFile(out)
    assert f.schema_arrow.names == ["n", "mixed", "maybe", "obj", "_meta"]
    types = {x.name: str(x.type) for x in f.schema_arrow}
    assert types["n"] == "double" and types["maybe"] == "string" and types["mixed"] == "string"
    assert types["obj"] == "struct<a: int64, b: string>"
    assert json.loads(f.schema_arrow.metadata[b"matrixlang.json_columns"]) == ["mixed"]
    back = list(iter_rows(out))
    assert [r["mixed"] for r in back[2:4]] == [[2], "text"] and back[9]["maybe"] == "late"
    assert back[7]["_meta"]["usage"] == {"agent1": {"prompt_tokens": 7, "completion_tokens": 1, "calls": 1}}
    assert back[4]["_meta"]["status"] == "failed" and back[4]["_meta"]["reason"] == "no_agreement"


def test_resume_merges_and_never_doubles_a_row(tmp_path):
    for name in ("out.parquet", "out.jsonl.zst", "out.jsonl.gz"):
        out = str(tmp_path / name)
        write_journal(out, [row(i, x=i) for i in range(5)])
        assert finalize(out) == 5
        write_journal(out, [row(i, x=i) for i in range(3, 8)])       # rows 3, 4 are in the output already
        assert finalize(out) == 8
        assert sorted(r["_meta"]["id"] for r in iter_rows(out)) == [f"r{i}" for i in range(8)]


def test_a_journal_being_written_is_not_merged(tmp_path):
    out = str(tmp_path / "out.parquet")
    write_journal(out, [row(1, x=1)])
    fd = os.open(journal_path(out), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)                               # another run's sink
    try:
        with pytest.raises(OutputError, match="being written by another run"):
            finalize(out, lock_wait_s=0.2)
        assert not os.path.exists(out) and os.path.exists(journal_path(out))   # nothing touched
    finally:
        os.close(fd)
    assert finalize(out) == 1
