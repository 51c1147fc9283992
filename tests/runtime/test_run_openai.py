"""`run()` with `backend = "openai"` models against real `mxc sim-server` processes over HTTP on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from matrixlang.runtime.backends.simserver import SimServerProcess
from matrixlang.runtime.control.run import RunOptions, run
from support import ir_fixtures as F
from test_run_semantics import coral_rows, read_out, reference, strip_timing, write_rows

pytestmark = pytest.mark.ray


def test_openai_backend_through_two_sim_servers(ray_local, tmp_path, monkeypatch):
    ir, rows = F.coral(), coral_rows(12)
    inp, out = write_rows(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    with SimServerProcess() as a, SimServerProcess() as b:
        monkeypatch.setenv("LLM_URL", f"{a.url},{b.url}")        # two endpoints, load-balanced
        summary = run(ir, RunOptions(input=str(inp), output=str(out), progress="off", print_summary=False))
        served = [srv.metrics() for srv in (a, b)]
    got = {r["_meta"]["id"]: strip_timing(r) for r in read_out(out)}
    assert sorted(got) == sorted(r["id"] for r in rows)
    for r in got.values():
        meta = r["_meta"]
        assert meta["steps"] == len(r["transcript"]) >= 2
        assert sum(u["calls"] for u in meta["usage"].values()) == meta["steps"]
        assert all(u["prompt_tokens"] > 0 for u in meta["usage"].values())    # usage as the server reported
    # the sim servers reply as the in-cluster simulator (mx_sim hints): the same rows, bar usage
    want = reference(ir, rows)
    for table in (got, want):
        for r in table.values():
            r["_meta"].pop("usage")
    assert got == want
    assert summary["rows"] == 12 and summary["backend"] is None
    assert summary["colocated"] == [["teacher", "student"]]   # openai models only: one actor kind hosts both roles
    chat = [sum(v for k, v in m.items() if k.startswith("mx_sim_requests_total") and "chat" in k) for m in served]
    assert sum(chat) == summary["steps"] and all(n > 0 for n in chat), json.dumps(served)[:2000]


def test_an_unreachable_openai_model_ends_rows_as_model_error(ray_local, tmp_path, monkeypatch):
    ir = F.coral()
    ir["models"]["llm"]["retries"] = 0
    ir["models"]["llm"]["timeout_s"] = 2.0
    ir = F.finish(ir)
    inp, out = write_rows(tmp_path / "in.jsonl", coral_rows(3)), tmp_path / "out.jsonl"
    monkeypatch.setenv("LLM_URL", "http://127.0.0.1:9/v1")            # nothing listens on port 9
    summary = run(ir, RunOptions(input=str(inp), output=str(out), progress="off", print_summary=False))
    rows = read_out(out)
    assert len(rows) == 3
    assert {(r["_meta"]["status"], r["_meta"]["reason"]) for r in rows} == {("error", "model_error")}
    assert all("llm" in r["_meta"]["detail"] for r in rows)
    assert summary["by_reason"] == {"error/model_error": 3}
