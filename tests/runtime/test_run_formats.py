"""Runs on a real local Ray over every input format (Parquet shards, a saved Hugging Face dataset,
JSONL.gz/.zst) into every output format (JSONL, JSONL.zst, Parquet), with bad rows and --resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matrixlang.runtime.control.run import RunError, RunOptions, run
from matrixlang.runtime.data.outputs import iter_rows, journal_path
from support import ir_fixtures as F
from test_inputs import write_jsonl, write_shards

pytestmark = pytest.mark.ray


def coral_rows(n: int) -> list[dict]:
    return [{"id": f"q{i}", "question": f"q {i}", "choices": ["a", "b", "c"]} for i in range(n)]


def opts(inp, out, **kw) -> RunOptions:
    return RunOptions(input=str(inp), output=str(out), backend="sim", progress="off", print_summary=False, **kw)


def ids_of(out: Path) -> list:
    return [r["_meta"]["id"] for r in iter_rows(str(out))]


def test_parquet_shards_with_bad_rows_into_jsonl(ray_local, tmp_path):
    rows = coral_rows(30)
    rows[4]["question"] = None                       # a null in a required field
    rows[17]["choices"] = None
    shards = write_shards(tmp_path / "shards", rows, 10)
    # a shard of its own schema: a wrong type (an int question) and a missing id column
    pq.write_table(pa.Table.from_pylist([{"id": "w0", "question": 7, "choices": ["a"]}]),
                   shards / "part-0003.parquet")
    pq.write_table(pa.Table.from_pylist([{"question": "no id", "choices": ["a"]}]), shards / "part-0004.parquet")
    out = tmp_path / "out.jsonl"
    s = run(F.coral(), opts(shards, out))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    metas = {m["position"]: m for m in (r["_meta"] for r in lines)}
    assert len(lines) == 32 == s["rows"] and sorted(metas) == list(range(32))
    bad = {p: m["detail"] for p, m in metas.items() if m["reason"] == "bad_input"}
    assert bad == {4: "field 'question': expected str, got null", 17: "field 'choices': expected list[str], got null",
                   30: "field 'question': expected str, got integer", 31: "field 'id': missing"}
    assert metas[31]["id"] == 31 and metas[31]["id_from"] == "position"
    assert s["input_format"] == "parquet" and s["by_status"].get("ok", 0) + s["by_status"]["failed"] == 32


def test_saved_dataset_into_parquet_then_resume(ray_local, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = coral_rows(40)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:3])}).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "out.parquet"
    first = run(F.coral(), opts(f"hf:{tmp_path / 'ds'}:train", out, limit=15))
    assert first["rows"] == first["output_rows"] == 15 and not Path(journal_path(str(out))).exists()
    with pytest.raises(RunError, match="--resume"):
        run(F.coral(), opts(f"hf:{tmp_path / 'ds'}:train", out))
    second = run(F.coral(), opts(f"hf:{tmp_path / 'ds'}:train", out, resume=True))
    assert second["skipped_done"] == 15 and second["rows"] == 25 and second["output_rows"] == 40
    table = pq.read_table(out)
    assert table.column_names == ["id", "answer", "correct", "transcript", "_meta"]
    assert pa.types.is_struct(table.schema.field("_meta").type)
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)
    ids = ids_of(out)
    assert sorted(ids) == sorted(r["id"] for r in rows)              # every row once
    back = next(r for r in iter_rows(str(out)) if r["_meta"]["id"] == "q3")
    assert back["transcript"][0]["agent"] == "teacher" and back["_meta"]["usage"]["teacher"]["calls"] >= 1


@pytest.mark.parametrize(("inp", "out"), [("in.jsonl.gz", "out.jsonl.zst"), ("in.jsonl.zst", "out.parquet")])
def test_a_crash_before_the_output_is_written_is_finished_by_resume(ray_local, tmp_path, inp, out):
    """A run killed after its journal got rows (or even after the merge, before the journal went):
    --resume writes every row exactly once."""
    src, dst = write_jsonl(tmp_path / inp, coral_rows(30)), tmp_path / out
    run(F.coral(), opts(src, dst, limit=10))
    journal = Path(journal_path(str(dst)))
    assert not journal.exists() and len(ids_of(dst)) == 10
    # a second run that died: its journal holds rows q9..q14 (q9 already in the output) and a torn line
    other = tmp_path / "other.jsonl"
    run(F.coral(), opts(write_jsonl(tmp_path / "o.jsonl", coral_rows(15)), other))
    lines = sorted(other.read_text().splitlines(keepends=True), key=lambda x: json.loads(x)["_meta"]["position"])
    journal.write_text("".join(lines[9:]) + lines[0][:40])
    s = run(F.coral(), opts(src, dst, resume=True))
    assert s["torn_bytes_cut"] > 0 and s["skipped_done"] == 15 and s["rows"] == 15
    assert sorted(ids_of(dst)) == sorted(f"q{i}" for i in range(30)) and not journal.exists()
    # the merge ran but the journal was left (a crash before its removal): nothing doubles
    shutil.copy(other, journal)
    s = run(F.coral(), opts(src, dst, resume=True))
    assert s["rows"] == 0 and s["output_rows"] == 30 and len(ids_of(dst)) == 30


def test_output_format_errors_are_clear(ray_local, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", coral_rows(3))
    (tmp_path / "out.parquet").write_bytes(b"garbage")
    with pytest.raises(RunError, match="cannot be read"):
        run(F.coral(), opts(src, tmp_path / "out.parquet", resume=True))
    with pytest.raises(RunError, match="--retry-errors needs a JSON Lines output"):
        run(F.coral(), opts(src, tmp_path / "out.parquet", resume=True, retry_errors=True))
    with pytest.raises(RunError, match="no such file"):
        run(F.coral(), opts(tmp_path / "none.parquet", tmp_path / "o.jsonl"))


def test_sigkill_of_mxc_run_into_parquet_then_resume_writes_every_row_once(ray_local, tmp_path):
    """A real `mxc run` from Parquet shards into a Parquet output, SIGKILLed mid-run: the output is not
    there yet, the journal holds whole lines; --resume writes the Parquet output with every row once."""
    ir = F.coral()
    ir["models"]["llm"]["sim"].update(ttft_s=0.05)
    ir_path = tmp_path / "coral.json"
    ir_path.write_text(json.dumps(F.finish(ir)))
    n = 120
    shards, out = write_shards(tmp_path / "shards", coral_rows(n), 25), tmp_path / "out.parquet"
    journal = Path(journal_path(str(out)))
    cmd = [sys.executable, "-m", "matrixlang", "run", str(ir_path), "--input", str(shards), "--output", str(out),
           "--backend", "sim", "--max-in-flight", "8", "--address", ray_local.get_runtime_context().gcs_address,
           "--progress", "off"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while (not journal.exists() or journal.read_bytes().count(b"\n") < 15) and proc.poll() is None:
        assert time.monotonic() < deadline, "the run wrote nothing"
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and journal.read_bytes().count(b"\n") < n
    done = subprocess.run(cmd + ["--resume", "--summary", str(tmp_path / "s.json")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = ids_of(out)
    assert len(ids) == len(set(ids)) == n and not journal.exists()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["output_rows"] == n and summary["rows"] + summary["skipped_done"] == n
