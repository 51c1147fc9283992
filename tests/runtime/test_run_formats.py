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
from matrixlang.runtime.data import outputs
from matrixlang.runtime.data.outputs import finalize, iter_rows, journal_path
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
    with pytest.raises(RunError, match="cannot be read"):
        run(F.coral(), opts(src, tmp_path / "out.parquet", resume=True, retry_errors=True))
    with pytest.raises(RunError, match="no such file"):
        run(F.coral(), opts(tmp_path / "none.parquet", tmp_path / "o.jsonl"))


def mxc_run(tmp_path: Path, ray_local, inp: Path, out: Path) -> list[str]:
    """The command line of a real `mxc run` of coral (sim replies after 50 ms) on ``ray_local``."""
    ir = F.coral()
    ir["models"]["llm"]["sim"].update(ttft_s=0.05)
    ir_path = tmp_path / "coral.json"
    ir_path.write_text(json.dumps(F.finish(ir)))
    return [sys.executable, "-m", "matrixlang", "run", str(ir_path), "--input", str(inp), "--output", str(out),
            "--backend", "sim", "--max-in-flight", "8", "--address", ray_local.get_runtime_context().gcs_address,
            "--progress", "off"]


def kill_mid_run(cmd: list[str], journal: Path, lines: int = 15) -> None:
    """Start ``cmd`` and SIGKILL it once ``journal`` holds ``lines`` rows (it must still be running)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while (not journal.exists() or journal.read_bytes().count(b"\n") < lines) and proc.poll() is None:
        assert time.monotonic() < deadline, "the run wrote nothing"
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_of_mxc_run_into_parquet_then_resume_writes_every_row_once(ray_local, tmp_path):
    """A real `mxc run` from Parquet shards into a Parquet output, SIGKILLed mid-run: the output is not
    there yet, the journal holds whole lines; --resume writes the Parquet output with every row once."""
    n = 120
    shards, out = write_shards(tmp_path / "shards", coral_rows(n), 25), tmp_path / "out.parquet"
    journal = Path(journal_path(str(out)))
    cmd = mxc_run(tmp_path, ray_local, shards, out)
    kill_mid_run(cmd, journal)
    assert not out.exists() and journal.read_bytes().count(b"\n") < n
    done = subprocess.run(cmd + ["--resume", "--summary", str(tmp_path / "s.json")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = ids_of(out)
    assert len(ids) == len(set(ids)) == n and not journal.exists()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["output_rows"] == n and summary["rows"] + summary["skipped_done"] == n


def as_errors(row: dict) -> dict:
    """``row`` as if its model had been down: status error."""
    row["_meta"].update(status="error", reason="model_error", detail="model 'llm': connection refused")
    return row


def write_output(out: Path, rows: list[dict], journal: list[dict] = (), torn: str = "") -> None:
    """A finished output of ``rows`` (written as the runtime writes it: a journal, then finalize), and
    then a journal of ``journal`` rows and a ``torn`` last line, as a stopped or killed run leaves it."""
    j = Path(journal_path(str(out)))
    j.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out.unlink(missing_ok=True)
    finalize(str(out))
    if journal or torn:
        j.write_text("".join(json.dumps(r) + "\n" for r in journal) + torn)


def finished_rows(src: Path, out: Path, n: int) -> list[dict]:
    """The ``n`` rows of a finished run of ``src``, in input order (a run into ``out``)."""
    run(F.coral(), opts(src, out, limit=n))
    return sorted(iter_rows(str(out)), key=lambda r: r["_meta"]["position"])


@pytest.mark.parametrize("out", ["out.parquet", "out.jsonl.zst", "out.jsonl.gz"])
def test_resume_with_retry_errors_runs_the_error_rows_again_once(ray_local, tmp_path, out):
    """--resume --retry-errors into a Parquet or compressed output: the error rows of the output and of
    its journal (a stopped run's, holding a row the output holds too, and a torn line) run again, and
    every row is in the output once."""
    src, dst = write_jsonl(tmp_path / "in.jsonl", coral_rows(16)), tmp_path / out
    rows = finished_rows(src, dst, 14)
    for i in (2, 5, 9, 13):
        as_errors(rows[i])
    write_output(dst, rows[:12], journal=[rows[9], rows[12], rows[13]], torn=json.dumps(rows[0])[:30])
    plain = run(F.coral(), opts(src, dst, resume=True, limit=14))     # without it, errors stay as they are
    assert plain["rows"] == 0 and plain["output_rows"] == 14
    assert sum(r["_meta"]["status"] == "error" for r in iter_rows(str(dst))) == 4
    write_output(dst, rows[:12], journal=[rows[9], rows[12], rows[13]], torn=json.dumps(rows[0])[:30])
    s = run(F.coral(), opts(src, dst, resume=True, retry_errors=True))
    got = list(iter_rows(str(dst)))
    assert sorted(r["_meta"]["id"] for r in got) == sorted(f"q{i}" for i in range(16))   # each once
    assert all(r["_meta"]["status"] != "error" for r in got) and not Path(journal_path(str(dst))).exists()
    assert s["retried_errors"] == 4 and s["skipped_done"] == 10 and s["rows"] == 6 and s["output_rows"] == 16


@pytest.mark.parametrize("then", ["resume", "retry_errors"])
def test_retry_errors_stopped_between_the_journal_and_the_output_leaves_every_row_once(
        ray_local, tmp_path, monkeypatch, then):
    """--retry-errors removes the error rows from the journal first, then from the finished output: a
    crash between the two (or while the output's copy is written: a stale OUT.tmp) leaves every row
    once for a plain --resume, and another --retry-errors runs the error rows again."""
    src, dst = write_jsonl(tmp_path / "in.jsonl", coral_rows(12)), tmp_path / "out.parquet"
    rows = finished_rows(src, dst, 12)
    for i in (1, 4, 8, 10):
        as_errors(rows[i])
    write_output(dst, rows[:9], journal=[rows[8], rows[9], rows[10]])
    real = outputs._replace

    def crash(path, rows, fsync):
        Path(path + ".tmp").write_bytes(b"PAR1 half a file")     # what a killed copy leaves
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs, "_replace", crash)
    with pytest.raises(RunError, match="cannot be rewritten for --retry-errors"):
        run(F.coral(), opts(src, dst, resume=True, retry_errors=True))
    monkeypatch.setattr(outputs, "_replace", real)
    journal = [json.loads(x)["_meta"] for x in Path(journal_path(str(dst))).read_text().splitlines()]
    assert [m["id"] for m in journal] == ["q9"]                   # its error rows q8 and q10 are gone
    Path(str(dst) + ".tmp").write_bytes(b"PAR1 half a file")
    s = run(F.coral(), opts(src, dst, resume=True, retry_errors=then == "retry_errors"))
    got = list(iter_rows(str(dst)))
    assert sorted(r["_meta"]["id"] for r in got) == sorted(f"q{i}" for i in range(12))   # each once
    errors = sorted(r["_meta"]["id"] for r in got if r["_meta"]["status"] == "error")
    if then == "resume":      # q10 left the journal and runs again (with q11); q1, q4, q8 are still done
        assert errors == ["q1", "q4", "q8"] and s["rows"] == 2 and s["retried_errors"] == 0
    else:
        assert errors == [] and s["retried_errors"] == 3 and s["rows"] == 5


@pytest.mark.parametrize("then", [[], ["--retry-errors"]], ids=["resume", "retry-errors"])
def test_sigkill_of_mxc_run_retry_errors_into_parquet_then_resume_writes_every_row_once(ray_local, tmp_path, then):
    """A real `mxc run --resume --retry-errors` into Parquet, SIGKILLed mid-run after it removed the
    error rows: --resume (or --resume --retry-errors) finishes it, every row once and the error rows run
    again."""
    n = 120
    src, out = write_jsonl(tmp_path / "in.jsonl", coral_rows(n)), tmp_path / "out.parquet"
    rows = finished_rows(src, out, 60)
    write_output(out, [as_errors(r) if r["_meta"]["position"] % 3 == 0 else r for r in rows])
    journal = Path(journal_path(str(out)))
    cmd = [*mxc_run(tmp_path, ray_local, src, out), "--resume"]
    kill_mid_run([*cmd, "--retry-errors"], journal)
    assert len(ids_of(out)) == 40                    # the 20 error rows are gone from the output
    done = subprocess.run([*cmd, *then, "--summary", str(tmp_path / "s.json")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = list(iter_rows(str(out)))
    ids = [r["_meta"]["id"] for r in got]
    assert len(ids) == len(set(ids)) == n and not journal.exists()
    assert not [r for r in got if r["_meta"]["status"] == "error"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["output_rows"] == n and summary["rows"] + summary["skipped_done"] == n
    assert summary["skipped_done"] >= 40 + 15 and summary["retried_errors"] == 0
