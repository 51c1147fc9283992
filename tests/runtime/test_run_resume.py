"""Nothing lost, nothing doubled across runs: --resume, torn last lines, SIGKILL of a real `mxc run`."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matrixlang.runtime.control.run import RunError, RunOptions, run
from support import ir_fixtures as F

pytestmark = pytest.mark.ray


def coral_input(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"q {i}", "choices": ["a", "b", "c"]}) + "\n"
                            for i in range(n)))
    return path


def ids_in(path: Path) -> list:
    return [json.loads(line)["_meta"]["id"] for line in path.read_text().splitlines()]


def opts(inp: Path, out: Path, **kw) -> RunOptions:
    return RunOptions(input=str(inp), output=str(out), backend="sim", progress="off", print_summary=False, **kw)


def test_resume_skips_written_rows_and_cuts_a_torn_line(ray_local, tmp_path):
    inp, out = coral_input(tmp_path / "in.jsonl", 25), tmp_path / "out.jsonl"
    first = run(F.coral(), opts(inp, out, limit=10))
    assert first["rows"] == 10 and len(ids_in(out)) == 10
    with pytest.raises(RunError, match="--resume"):
        run(F.coral(), opts(inp, out))                      # never overwrite by accident
    with out.open("a") as f:
        f.write('{"id": "q12", "answer": "A", "_meta": {"id": "q1')   # a crash mid-write
    second = run(F.coral(), opts(inp, out, resume=True))
    ids = ids_in(out)                                       # every line parses: the torn one is gone
    assert sorted(ids) == sorted(f"q{i}" for i in range(25))
    assert second["skipped_done"] == 10 and second["rows"] == 15
    assert second["torn_bytes_cut"] > 0
    third = run(F.coral(), opts(inp, out, overwrite=True, limit=4))
    assert third["rows"] == 4 and sorted(ids_in(out)) == [f"q{i}" for i in range(4)]


def test_sigkill_of_mxc_run_then_resume_writes_every_row_exactly_once(ray_local, tmp_path):
    ir = copy.deepcopy(F.coral())
    ir["models"]["llm"]["sim"].update(ttft_s=0.05)
    ir_path = tmp_path / "coral.json"
    ir_path.write_text(json.dumps(F.finish(ir)))
    n = 160
    inp, out = coral_input(tmp_path / "in.jsonl", n), tmp_path / "out.jsonl"
    address = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "matrixlang", "run", str(ir_path), "--input", str(inp), "--output", str(out),
           "--backend", "sim", "--max-in-flight", "8", "--address", address, "--progress", "plain"]
    proc = subprocess.Popen(cmd + ["--run-id", "killed"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while (not out.exists() or out.read_text().count("\n") < 20) and proc.poll() is None:
        assert time.monotonic() < deadline, "the run wrote nothing"
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = ids_in_lenient(out)
    assert 20 <= len(partial) < n                            # killed mid-run
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    done = subprocess.run(cmd + ["--resume", "--summary", str(tmp_path / "s.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = ids_in(out)
    assert len(ids) == len(set(ids)) == n                    # every row exactly once
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["skipped_done"] >= len(set(partial)) and summary["rows"] == n - summary["skipped_done"]
    assert {"rows", "elapsed_s", "rows_per_s", "tokens", "tokens_per_s", "by_status"} <= set(summary)


def ids_in_lenient(path: Path) -> list:
    """Ids of the whole lines of a file a killed run may have left with a torn last line."""
    out = []
    for line in path.read_text().split("\n")[:-1]:
        out.append(json.loads(line)["_meta"]["id"])
    return out


def test_resume_with_retry_errors_runs_the_error_rows_again_once(ray_local, tmp_path):
    """Issue 11, break 8: rows that ended as `error` (an outage) are not skipped by --resume --retry-errors."""
    inp, out = coral_input(tmp_path / "in.jsonl", 12), tmp_path / "out.jsonl"
    run(F.coral(), opts(inp, out))
    lines = out.read_text().splitlines()
    failed = set()
    for i in (2, 5, 9):                       # as if a model had been down for these rows
        row = json.loads(lines[i])
        row["_meta"].update(status="error", reason="model_error", detail="model 'llm': connection refused")
        failed.add(row["_meta"]["id"])
        lines[i] = json.dumps(row)
    out.write_text("\n".join(lines) + "\n" + '{"torn": ')
    with pytest.raises(RunError, match="--retry-errors goes with --resume"):
        run(F.coral(), opts(inp, out, retry_errors=True))
    plain = run(F.coral(), opts(inp, out, resume=True))            # without it, errors stay as they are
    assert plain["rows"] == 0 and plain["skipped_done"] == 12
    s = run(F.coral(), opts(inp, out, resume=True, retry_errors=True))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["_meta"]["id"] for r in rows) == sorted(f"q{i}" for i in range(12))   # each once
    assert all(r["_meta"]["status"] != "error" for r in rows)
    assert s["retried_errors"] == 3 and s["rows"] == 3 and s["skipped_done"] == 9
    assert {r["_meta"]["id"] for r in rows[-3:]} == failed
