"""The chaos run (bench/chaos.py) kept working: a 40 s smoke of it, every kind of fault at least once,
and its count of lost, duplicated and torn rows (slow: a three-node cluster starts on two cores).
The counting itself is checked on files made to be wrong, so a count that saw nothing would fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chaos import KINDS  # noqa: E402
from bench.chaos_count import check_summary, count_output  # noqa: E402


def _row(i: int, status: str = "ok", product: str | None = None, reason: str | None = None) -> str:
    return json.dumps({"id": f"c{i}", "n": i, "product": product or str(7 * i),
                       "_meta": {"id": f"c{i}", "status": status, "reason": reason}}) + "\n"


def test_the_count_finds_lost_duplicated_torn_and_wrong_rows(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(_row(0) + _row(1) + _row(1) + _row(2, product="15") + '{"id": "c3", "n"\n'
                   + _row(4, "error", reason="model_error") + '{"id": "c5"')
    got = count_output(out, 6)
    assert (got["lost"], got["duplicated"], got["torn"], got["wrong"]) == (2, 1, 2, 1)   # c3, c5 lost
    assert got["by_status"] == {"ok": 4, "error/model_error": 1}
    summary = {"skipped_done": 1, "rows": 3, "by_status": {"ok": 3, "error": 1}, "by_reason": {"error/model_error": 1}}
    assert check_summary(summary, got)["agrees"] is False        # 4 lines claimed, 5 whole ones
    summary["skipped_done"] = 2
    assert check_summary(summary, got)["agrees"] is True
    summary["by_status"]["ok"] = 5
    assert check_summary(summary, got)["claims_beyond_file"] == {"ok": 5}


@pytest.mark.slow
def test_a_short_chaos_run_loses_doubles_and_tears_nothing(tmp_path):
    out = tmp_path / "chaos.json"
    proc = subprocess.run([sys.executable, "-m", "bench.chaos", "--duration", "40", "--gap", "4", "--rows", "300",
                           "--out", str(out), "--work-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    res = json.loads(out.read_text())
    assert all(res["faults"][k] >= 1 for k in KINDS if k != "node"), res["faults"]   # each kind at least once
    t = res["totals"]
    assert res["outputs_completed"] >= 1 and t["input_rows"] == 300 * res["outputs_completed"]
    assert (t["lost"], t["duplicated"], t["torn"], t["wrong"]) == (0, 0, 0, 0)
    assert res["summaries_agree"]
    assert sum(t["by_status"].values()) == t["input_rows"]
