"""Trials (each row K times, ids ID#k, derived seeds) and the stop rule (--until-ok N), on a real local
Ray, from the options and from the language's `limits`; both through --resume."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from matrixlang.runtime.control.run import RunError, RunOptions, run
from support import ir_fixtures as F
from test_inputs import write_jsonl
from test_run_formats import coral_rows, ids_of

pytestmark = pytest.mark.ray


def opts(inp, out, **kw) -> RunOptions:
    return RunOptions(input=str(inp), output=str(out), backend="sim", progress="off", print_summary=False, **kw)


def metas(out) -> list[dict]:
    return [json.loads(x)["_meta"] for x in out.read_text().splitlines()]


def test_trials_run_each_row_k_times_with_their_own_ids_and_seeds(ray_local, tmp_path):
    rows = coral_rows(12)
    rows[5]["choices"] = "oops"                     # a bad row fails in each of its trials
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    s = run(F.coral(), opts(src, out, trials=3, limit=8))
    ms = metas(out)
    assert s["rows"] == 24 and s["input_rows"] == 8 and s["trials"] == 3
    assert sorted(m["id"] for m in ms) == sorted(f"q{i}#{k}" for i in range(8) for k in range(3))
    assert all(m["trial"] == int(m["id"].rsplit("#", 1)[1]) for m in ms)
    assert Counter(m["reason"] for m in ms)["bad_input"] == 3
    replies = {}
    for line in out.read_text().splitlines():
        row = json.loads(line)
        if row["transcript"]:
            replies.setdefault(row["id"], set()).add(row["transcript"][0]["text"])
    assert any(len(texts) > 1 for texts in replies.values())      # trials draw from their own seeds
    again = run(F.coral(), opts(src, out, trials=3, resume=True))
    assert again["skipped_done"] == 24 and again["rows"] == 12
    ids = ids_of(out)
    assert len(ids) == len(set(ids)) == 36


def test_positional_ids_get_trials_too(ray_local, tmp_path):
    rows = [{"question": f"q {i}", "choices": ["a"]} for i in range(4)]   # no id field: bad rows, by position
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    run(F.coral(), opts(src, out, trials=2))
    ms = metas(out)
    assert sorted(m["id"] for m in ms) == sorted(f"{p}#{k}" for p in range(4) for k in range(2))
    assert all(m["id_from"] == "position" for m in ms)
    assert run(F.coral(), opts(src, out, trials=2, resume=True))["rows"] == 0   # known by (position, trial)


def test_until_ok_stops_admitting_and_resume_continues_to_the_target(ray_local, tmp_path):
    src, out = write_jsonl(tmp_path / "in.jsonl", coral_rows(200)), tmp_path / "out.jsonl"
    s = run(F.coral(), opts(src, out, until_ok=10, max_in_flight=4))
    ok = sum(m["status"] == "ok" for m in metas(out))
    assert 10 <= ok < 10 + 4 and s["ok_rows"] == ok
    assert s["rows"] < 60 and s["rows"] == len(metas(out))          # admission stopped long before the end
    assert s["ended"].startswith("until_ok: 10 rows with status ok")
    same = run(F.coral(), opts(src, out, until_ok=10, resume=True))
    assert same["rows"] == 0 and same["ended"].startswith("until_ok")
    more = run(F.coral(), opts(src, out, until_ok=30, max_in_flight=4, resume=True))
    ok = sum(m["status"] == "ok" for m in metas(out))
    assert 30 <= ok < 34 and more["ok_rows"] == ok and more["skipped_done"] == s["rows"]
    ids = ids_of(out)
    assert len(ids) == len(set(ids))
    with pytest.raises(RunError, match="--until-ok must be at least 1"):
        run(F.coral(), opts(src, out, until_ok=0, resume=True))


def test_the_language_form_sets_trials_and_until_ok(ray_local, tmp_path):
    ir = F.coral()
    ir["limits"].update(trials=2, until_ok=5)
    src, out = write_jsonl(tmp_path / "in.jsonl", coral_rows(100)), tmp_path / "out.jsonl"
    s = run(ir, opts(src, out, max_in_flight=2))
    ms = metas(out)
    assert s["trials"] == 2 and s["until_ok"] == 5 and 5 <= sum(m["status"] == "ok" for m in ms) < 7
    assert all("#" in m["id"] for m in ms) and s["rows"] < 40
    over = run(ir, opts(src, tmp_path / "o2.jsonl", trials=1, until_ok=3, max_in_flight=1))   # the options win
    assert over["trials"] == 1 and over["ok_rows"] == 3
