"""`run()` on real Ray: every row exactly once, with exactly the engine's semantics.

Each workflow is also executed by a plain in-process reference loop over the same Engine and the
simulator's reply function; the Ray run (actors, coalesced transport, sim service, offloading) must
write the same rows. A table of hand-computed rows pins the spec's semantics (counters, guards,
limits, bad input) independently of the engine.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from matrixlang.runtime.actors.routing import message_bytes
from matrixlang.runtime.backends.simmodel import sim_reply
from matrixlang.runtime.control.run import RunOptions, run
from matrixlang.runtime.semantics.engine import Engine, LLMCall, Reply
from support import ir_fixtures as F

pytestmark = pytest.mark.ray


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def strip_timing(row: dict) -> dict:
    row = copy.deepcopy(row)
    row["_meta"].pop("timing")
    return row


def by_id(rows: list[dict]) -> dict:
    ids = [r["_meta"]["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["_meta"]["id"]: strip_timing(r) for r in rows}


def reference(ir: dict, rows: list, seed: int = 0) -> dict:
    """The rows a sequential, in-process execution of the engine writes."""
    eng = Engine(ir, seed=seed, backend="sim")
    out = []
    for pos, raw in enumerate(rows):
        msg = eng.new_message(raw if isinstance(raw, str) else json.dumps(raw), pos, 0.0)
        while not msg.finished:
            call = eng.prepare_call(msg, [])
            assert isinstance(call, LLMCall)
            text = sim_reply(call.sim_text, call.sim_tokens, call.seed_key)
            eng.apply_reply(msg, Reply(text, call.prompt_tokens, call.sim_tokens), [], 0.0)
        out.append(eng.output_row(msg, []))
    return by_id(out)


def run_rows(tmp_path: Path, ir: dict, rows: list, name: str = "out", **kw) -> tuple[dict, dict]:
    inp = write_rows(tmp_path / f"{name}.in.jsonl", rows)
    out = tmp_path / f"{name}.jsonl"
    opts = RunOptions(input=str(inp), output=str(out), backend="sim", progress="off",
                      print_summary=False, **kw)
    summary = run(ir, opts)
    return by_id(read_out(out)), summary


def coral_rows(n: int) -> list:
    return [{"id": f"q{i}", "question": f"What is {i} + {i}?", "choices": ["0", str(2 * i), "7", "9"],
             "answer": "B"} for i in range(n)]


def curate_rows(n: int) -> list:
    return [{"id": f"d{i}", "text": f"Document {i}. " * (1 + i % 5)} for i in range(n)]


@pytest.mark.parametrize("name, ir, rows, kw", [
    ("coral", F.coral(), coral_rows(24) + ["not json", {"id": "x", "question": 1, "choices": []}],
     {"replicas": {"teacher": 2, "student": 2}}),
    ("curate", F.curate(), curate_rows(30), {}),
    ("loop", F.loop(max_steps=4), [{"n": i} for i in range(10)] + [{}], {"limit": 7, "max_in_flight": 3}),
    ("start", F.start_guarded(), [{"kind": k} for k in ("x", "skip", "bad", "other", "x")], {}),
])
def test_ray_run_writes_every_row_once_as_the_engine_does(ray_local, tmp_path, name, ir, rows, kw):
    kw = {"max_in_flight": 8, **kw}
    got, summary = run_rows(tmp_path, ir, rows, **kw)
    rows = rows[: kw.get("limit")]
    assert got == reference(ir, rows)
    assert summary["rows"] == len(rows) == sum(summary["by_status"].values()) == summary["input_rows"]
    assert 1 <= summary["peak_in_flight"] <= kw["max_in_flight"]
    for role, n in kw.get("replicas", {}).items():
        assert summary["agents"][role]["replicas"] == n
        assert len(summary["agents"][role]["replica_calls"]) == n
        assert all(c > 0 for c in summary["agents"][role]["replica_calls"])     # load is spread


LOOP_TABLE = [
    # row,              expected user fields,                    status,   reason
    ({"n": 0}, {"n": 0, "turns": 1, "last": "n=0"}, "ok", None),
    ({"n": 2}, {"n": 2, "turns": 3, "last": "n=2"}, "ok", None),
    ({"n": 9}, {"n": 9, "turns": 4, "last": "n=3"}, "failed", "max_steps"),
    ({}, {"n": None, "turns": 4, "last": "n=3"}, "failed", "max_steps"),   # a.num >= null is false
    ({"n": "x"}, {"turns": 0, "last": None}, "failed", "bad_input"),
    ("[1, 2]", {"turns": 0, "last": None}, "failed", "bad_input"),
    ("{broken", {"turns": 0, "last": None}, "failed", "bad_input"),
]


def test_loop_table_exact_values(ray_local, tmp_path):
    ir = F.loop(max_steps=4, guard=F.bin(">=", F.call("int", F.dot("a.num")), F.dot("row.n")),
                guard_text="int(a.num) >= row.n")
    ir["agents"]["a"]["sim"] = "n={{ turns }}"
    ir = F.finish(ir)
    rows = [r for r, *_ in LOOP_TABLE]
    got, summary = run_rows(tmp_path, ir, rows)
    for pos, (_, fields, status, reason) in enumerate(LOOP_TABLE):
        row = got[pos]
        assert {k: row[k] for k in fields} == fields, pos
        meta = row["_meta"]
        assert (meta["status"], meta["reason"], meta["steps"], meta["attempt"]) == (
            status, reason, fields["turns"], 0), pos
        calls = meta["usage"].get("a", {}).get("calls", 0)
        assert calls == fields["turns"]
        assert meta["workflow"] == {"name": "loop", "hash": ir["workflow"]["source_hash"]}
    assert "'n'" in got[4]["_meta"]["detail"]
    assert "not valid JSON" in got[6]["_meta"]["detail"]
    assert summary["by_status"] == {"ok": 2, "failed": 5}
    assert summary["by_reason"] == {"failed/bad_input": 3, "failed/max_steps": 2}
    assert summary["steps"] == 1 + 3 + 4 + 4
    assert summary["agents"]["a"]["calls"] == 12


def test_row_batch_and_central_runs_write_identical_rows(ray_local, tmp_path):
    ir, rows = F.coral(), coral_rows(30)
    base, s_row = run_rows(tmp_path, ir, rows, "row", max_in_flight=6, seed=7)
    batch, s_batch = run_rows(tmp_path, ir, rows, "batch", max_in_flight=6, seed=7, schedule="batch")
    central, s_central = run_rows(tmp_path, ir, rows, "central", max_in_flight=6, seed=7,
                                  orchestrator="central")
    together, s_together = run_rows(tmp_path, ir, rows, "together", max_in_flight=6, seed=7, colocate="all",
                                    replicas={"teacher": 2, "student": 2})
    assert base == batch == central == together == reference(ir, rows, seed=7)
    assert s_row["colocated"] == [] and s_together["colocated"] == [["teacher", "student"]]
    assert s_together["agents"]["teacher"]["calls"] == s_row["agents"]["teacher"]["calls"] > 0
    assert s_together["agents"]["student"]["replica_calls"] != [0, 0]
    assert len(base) == 30
    assert reference(ir, rows, seed=7) != reference(ir, rows, seed=0)    # so the runs used the seed
    for s in (s_row, s_batch, s_central):
        assert s["peak_in_flight"] <= 6
        assert s["tokens"] == s_row["tokens"] > 0
    assert (s_batch["schedule"], s_central["orchestrator"]) == ("batch", "central")
    # admission: batch mode starts a batch when the whole previous one is written; row mode at once
    def spans(name: str) -> list[tuple[float, float, int]]:
        return sorted((r["_meta"]["timing"]["admitted"], r["_meta"]["timing"]["finished"], r["_meta"]["steps"])
                      for r in read_out(tmp_path / f"{name}.jsonl"))
    b = spans("batch")
    for k in range(6, 30, 6):
        assert min(a for a, _, _ in b[k:k + 6]) >= max(f for _, f, _ in b[k - 6:k])
    r = spans("row")
    assert len({steps for _, _, steps in r[:6]}) > 1   # the first six differ in length: one ends first ...
    assert r[6][0] < max(f for _, f, _ in r[:6])       # ... and the next row starts before the rest end


def test_a_bad_template_or_a_silent_model_fails_only_its_rows(ray_local, tmp_path):
    ir = F.loop(max_steps=2, template="{{ 10 // row.n }}", sim_model=True)     # n = 0: ZeroDivisionError
    got, summary = run_rows(tmp_path, ir, [{"n": 1}, {"n": 0}, {"n": 5}], "tmpl")
    assert [got[i]["_meta"]["reason"] for i in range(3)] == ["max_steps", "template_error", "max_steps"]
    assert got[1]["_meta"]["status"] == "failed" and "division" in got[1]["_meta"]["detail"]
    assert summary["steps"] == 4
    slow = copy.deepcopy(ir)
    slow["models"]["m"]["sim"].update(ttft_s=30.0)              # never answers within the call timeout
    slow["models"]["m"].update(timeout_s=0.3, retries=1)
    got, summary = run_rows(tmp_path, slow, [{"n": 1}, {"n": 2}], "silent")
    for row in got.values():
        meta = row["_meta"]
        assert (meta["status"], meta["reason"], meta["steps"]) == ("error", "model_error", 0)
        assert "no reply after 1 retries" in meta["detail"]
    assert summary["by_status"] == {"error": 2}


def inline_bytes_per_hop(ir: dict, rows: list) -> float:
    """Mean pickled size of the messages a run without offloading sends between agents."""
    eng = Engine(ir, backend="sim")
    sizes = []
    for pos, raw in enumerate(rows):
        msg = eng.new_message(json.dumps(raw), pos, 0.0)
        while not msg.finished:
            call = eng.prepare_call(msg, [])
            text = sim_reply(call.sim_text, call.sim_tokens, call.seed_key)
            eng.apply_reply(msg, Reply(text, call.prompt_tokens, call.sim_tokens), [], 0.0)
            if not msg.finished:
                sizes.append(message_bytes(msg))
    return sum(sizes) / len(sizes)


def test_offloading_round_trip_frees_everything_and_shrinks_hops(ray_local, tmp_path):
    ir = copy.deepcopy(F.coral())
    for agent in ir["agents"].values():       # filler replies of ~1 KB: no answer, 20 turns
        agent["sim"] = None
    ir["models"]["llm"]["sim"].update(tokens=[150, 250], per_token_s=0.00002)
    ir = F.finish(ir)
    rows = coral_rows(6)
    got, summary = run_rows(tmp_path, ir, rows, offload_threshold=512, measure_bytes=True)
    assert got == reference(ir, rows)
    assert {r["_meta"]["reason"] for r in got.values()} == {"no_agreement"}
    assert all(len(r["transcript"]) == 20 and len(r["transcript"][5]["text"]) > 512 for r in got.values())
    # entries 0..17 were offloaded (the newest rides inline one more hop; 18 and 19 end in the output)
    assert summary["offload"]["put"] == summary["offload"]["freed"] == 6 * 18
    assert summary["offload"]["still_held"] == 0
    assert summary["bytes_per_hop"] < inline_bytes_per_hop(ir, rows) / 2


def test_the_simulated_fleet_decodes_at_most_its_slots_and_queues_the_rest(ray_local, tmp_path):
    ir = F.loop(max_steps=3, sim_model=True)
    ir["models"]["m"]["sim"].update(max_concurrency=2, replicas=2, ttft_s=0.05)
    got, summary = run_rows(tmp_path, ir, [{"n": i} for i in range(12)], "fleet", max_in_flight=12)
    assert len(got) == 12 and summary["by_reason"] == {"failed/max_steps": 12}
    models = [s["models"]["m"] for s in summary["services"].values()]
    assert sum(m["replicas"] for m in models) == 2 and {m["max_concurrency"] for m in models} == {2}
    assert sum(m["served"] for m in models) == summary["steps"] == 36
    assert sum(m["tokens"] for m in models) == summary["tokens"]
    for m in models:                        # 12 rows wait on 2 x 2 slots: each replica fills, the rest queue
        assert m["peak_active"] <= m["replicas"] * m["max_concurrency"]
    assert max(m["peak_active"] for m in models) == 2 and sum(m["peak_queued"] for m in models) > 0
