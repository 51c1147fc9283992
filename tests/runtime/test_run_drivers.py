"""Several drivers (--drivers N) on a real local Ray: every row once, repeated ids found across the
input, each shard recovering its own rows lost with a killed agent, one summary, until_ok over all."""

from __future__ import annotations

import json

import pytest
from matrixlang.runtime.control.run import RunError, RunOptions, run
from matrixlang.runtime.control.shards import merge, shares
from support import ir_fixtures as F
from test_faults import kill_when_holding, slow_student, start_run
from test_inputs import write_jsonl
from test_run_formats import coral_rows

pytestmark = pytest.mark.ray


def opts(inp, out, **kw) -> RunOptions:
    return RunOptions(input=str(inp), output=str(out), backend="sim", progress="off", print_summary=False, **kw)


def metas(out) -> list[dict]:
    return [json.loads(x)["_meta"] for x in out.read_text().splitlines()]


def test_shares_and_merge():
    assert shares(10, 3) == [4, 3, 3] and sum(shares(256, 7)) == 256
    from matrixlang.runtime.control.driver import DriverResult

    a, b = DriverResult(rows=3, first_admit=5.0, last_done=9.0), DriverResult(rows=4, first_admit=4.0, ended="until_ok")
    a.by_status["ok"] += 3
    m = merge([a, b])
    assert (m.rows, m.first_admit, m.last_done, m.ended, m.by_status["ok"]) == (7, 4.0, 9.0, "until_ok", 3)


def test_three_drivers_write_every_row_once_and_find_repeated_ids(ray_local, tmp_path):
    rows = coral_rows(90)
    rows[40]["id"] = "q3"                          # repeats row 3's id: written as duplicate_id
    rows[70] = {"question": "no id", "choices": ["a"]}      # bad: known by its position
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    first = run(F.coral(), opts(src, out, drivers=3, max_in_flight=12, trials=2, limit=50))
    assert first["drivers"] == 3 and first["rows"] == 100 and first["input_rows"] == 50
    s = run(F.coral(), opts(src, out, drivers=2, max_in_flight=12, trials=2, resume=True))
    ms = metas(out)
    keys = [(m["id"], m["position"]) for m in ms]
    assert len(ms) == len(set(keys)) == 180 and s["skipped_done"] == 100 and s["rows"] == 80
    assert sorted(m["position"] for m in ms if m["reason"] == "duplicate_id") == [40, 40]
    assert sorted(m["id"] for m in ms if m["position"] == 70) == ["70#0", "70#1"]
    assert s["by_status"].get("ok", 0) + s["by_status"].get("failed", 0) == s["rows"]


def test_each_driver_recovers_its_rows_lost_with_a_killed_agent(ray_local, tmp_path):
    n = 40
    t, result, out = start_run(tmp_path, slow_student(), n, "drivers1", max_in_flight=n, idle_scan_s=2.0,
                               drivers=2)
    held = kill_when_holding("mx-drivers1:agent:student:0", 25, result)
    t.join(timeout=300)
    assert not t.is_alive() and "error" not in result, result.get("error")
    rows = {r["_meta"]["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert out.read_text().count("\n") == n and sorted(rows) == sorted(f"r{i}" for i in range(n))
    assert held <= {k for k, r in rows.items() if r["_meta"]["attempt"] == 1}
    s = result["summary"]
    assert s["readmitted"] >= len(held) and s["lost"] == 0 and s["rows"] == n


def test_until_ok_over_every_driver(ray_local, tmp_path):
    src, out = write_jsonl(tmp_path / "in.jsonl", coral_rows(300)), tmp_path / "out.jsonl"
    s = run(F.coral(), opts(src, out, drivers=3, max_in_flight=6, until_ok=15))
    ok = sum(m["status"] == "ok" for m in metas(out))
    assert ok >= 15 and s["ok_rows"] == ok and s["rows"] == len(metas(out)) < 150
    assert s["ended"].startswith("until_ok")
    with pytest.raises(RunError, match="--drivers 9 is more than --max-in-flight 4"):
        run(F.coral(), opts(src, out, drivers=9, max_in_flight=4, resume=True))
