"""A row counts as written only once its line is in the output (the red team's break 1).

A row or a reply that cannot be encoded fails that row alone or is written escaped; a full disk stops
the run with a clear error, leaves only whole lines, and ``--resume`` finishes it; the summary never
claims rows the output lacks.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from matrixlang.runtime.actors.sink import encode_line
from matrixlang.runtime.control.run import RunOptions, RunStopped, run
from support import ir_fixtures as F

pytestmark = pytest.mark.ray


def rows_in(path: Path) -> list[dict]:
    """Every line of ``path``: each must be whole, valid UTF-8 and valid JSON."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "a torn last line"
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def write_input(path: Path, n: int, extra: list[str] = ()) -> Path:
    lines = [json.dumps({"id": f"q{i}", "question": f"q {i}", "choices": ["a", "b"]}) for i in range(n)]
    path.write_text("\n".join([*lines[: n // 2], *extra, *lines[n // 2:]]) + "\n", encoding="utf-8")
    return path


def opts(inp: Path, out: Path, **kw) -> RunOptions:
    return RunOptions(input=str(inp), output=str(out), backend="sim", progress="off", print_summary=False, **kw)


def test_encode_line_keeps_every_line_json_and_utf8() -> None:
    assert encode_line({"a": "é"}) == '{"a": "é"}\n'.encode()
    bad = encode_line({"a": "x \ud800 y", "b": "é"})
    assert bad.decode("ascii") and json.loads(bad) == {"a": "x \ud800 y", "b": "é"}
    assert json.loads(encode_line({"a": float("nan"), "b": [float("inf"), 1.5]})) == {"a": None, "b": [None, 1.5]}


def test_a_lone_surrogate_in_a_row_or_a_reply_loses_nothing(ray_local, tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 400, ['{"id":"surr","question":"bad \\ud800 text","choices":["a"]}'])
    ir = copy.deepcopy(F.coral())
    # Every reply of the student holds a lone surrogate: the rows are written, escaped.
    ir["agents"]["student"]["sim"] = r"Here is my view {{ '\ud800' }}. Answer: {{ ['A','B'] | random }}"
    out = tmp_path / "out.jsonl"
    summary = run(F.finish(ir), opts(inp, out, max_in_flight=64))
    rows = rows_in(out)
    ids = [r["_meta"]["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 401
    assert summary["rows"] == 401 and sum(summary["by_status"].values()) == 401
    surr = next(r for r in rows if r["_meta"]["id"] == "surr")
    assert (surr["_meta"]["status"], surr["_meta"]["reason"]) == ("failed", "bad_input")
    assert "lone surrogate" in surr["_meta"]["detail"]
    ok = next(r for r in rows if r["_meta"]["status"] == "ok")
    assert any("\ud800" in e.get("text", "") for e in ok["transcript"])


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 192 KiB tmpfs: the output fills it mid-run (root and mount needed; skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_stops_the_run_and_resume_finishes_it(ray_local, tmp_path: Path, small_disk: Path) -> None:
    n = 600
    inp, out = write_input(tmp_path / "in.jsonl", n), small_disk / "out.jsonl"
    summary_path = tmp_path / "summary.json"
    with pytest.raises(RunStopped, match="No space left on device") as stop:
        run(F.coral(), opts(inp, out, max_in_flight=32, summary=str(summary_path)))
    rows = rows_in(out)                                       # only whole lines: nothing torn
    assert 0 < len(rows) < n
    summary = stop.value.summary
    assert summary["rows"] == len(rows) == sum(summary["by_status"].values())   # no row claimed that is not there
    assert "ENOSPC" in summary["stopped"]
    assert json.loads(summary_path.read_text())["rows"] == len(rows)

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    second = run(F.coral(), opts(inp, out, resume=True, max_in_flight=32))
    ids = [r["_meta"]["id"] for r in rows_in(out)]
    assert sorted(ids) == sorted(f"q{i}" for i in range(n))   # every row exactly once
    assert second["rows"] == n - len(rows) and second["stopped"] is None


def test_mxc_run_exits_4_with_one_line_on_a_full_disk(ray_local, tmp_path: Path, small_disk: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 600)
    address = ray_local.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-m", "matrixlang", "run", str(Path(__file__).parents[2] / "workflows" / "coral.mx"),
         "--input", str(inp), "--output", str(small_disk / "out.jsonl"), "--backend", "sim",
         "--address", address, "--progress", "off", "--run-id", uuid.uuid4().hex[:6]],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mxc run: stopped after ") and "--resume" in last and "Traceback" not in proc.stderr
