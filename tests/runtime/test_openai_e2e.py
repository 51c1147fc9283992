"""Workflows with `openai` models run on real Ray against `mxc sim-server` subprocesses on 127.0.0.1:
the same rows as the in-cluster simulator, faults ending with every row written once, an endpoint
killed mid-run, the API key kept out of outputs and logs."""

from __future__ import annotations

import copy
import json
import os
import secrets
import threading
import time
from pathlib import Path

import pytest
import ray
from matrixlang.runtime.backends.simserver import SimServerProcess
from matrixlang.runtime.control.run import RunError, RunOptions, run

from matrixlang.checker import check
from matrixlang.compiler import build_ir
from matrixlang.source import Source

pytestmark = pytest.mark.ray

WORKFLOW = r'''
workflow duet "two agents on two models served over HTTP"
input { id: str  topic: str }
limits { max_steps = 10 }
model fast {
  backend = "openai"
  name = "fast-model"
  url = env("E2E_FAST_URL")
  api_key = env("E2E_KEY")
  max_tokens = 40
  timeout = 5s
  retries = 3
}
model slow {
  backend = "openai"
  name = "slow-model"
  url = env("E2E_SLOW_URL")
  max_tokens = 30
  timeout = 5s
  retries = 3
}
agent a {
  model = fast
  system = "Discuss {{ row.topic }}."
  prompt = "{{ last.text if last else 'Begin.' }}"
  extract verdict = regex(r"(yes|no|maybe)")
  sim = "Point {{ turns }} on {{ row.topic }}: {{ ['yes', 'no', 'maybe'] | random }}"
}
agent b {
  model = slow
  system = "Answer your partner about {{ row.topic }}."
}
flow {
  start -> a
  a -> b
  b -> end when turns >= 6 or a.verdict == "no"
  b -> a
}
output { id = row.id  verdict = a.verdict  last = b.text  transcript = history }
'''
SEED = 5
ROWS = 24


def compile_ir(program: str = WORKFLOW) -> dict:
    an = check(Source("duet.mx", program))
    assert not [d for d in an.diags.sorted() if d.is_error]
    return build_ir(an)


def write_rows(path: Path, n: int = ROWS) -> Path:
    path.write_text("".join(json.dumps({"id": f"r{i}", "topic": f"topic {i % 7}"}) + "\n" for i in range(n)))
    return path


def by_id(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    ids = [r["_meta"]["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a row was written twice"
    out = {}
    for r in rows:
        r["_meta"].pop("timing")
        out[r["_meta"]["id"]] = r
    return out


def opts(tmp: Path, name: str, **kw) -> RunOptions:
    return RunOptions(input=str(tmp / "in.jsonl"), output=str(tmp / f"{name}.jsonl"), seed=SEED,
                      progress="off", print_summary=False, summary=str(tmp / f"{name}.summary.json"), **kw)


def ok_count(srv: SimServerProcess) -> float:
    return srv.metrics().get('mx_sim_requests_total{route="/v1/chat/completions",code="200"}', 0.0)


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory) -> dict:
    """The rows of `--backend sim` (the in-cluster simulator)."""
    tmp = tmp_path_factory.mktemp("ref")
    write_rows(tmp / "in.jsonl")
    s = run(compile_ir(), opts(tmp, "sim", backend="sim"))
    assert s["rows"] == ROWS
    return by_id(tmp / "sim.jsonl")


@pytest.fixture
def key_env(monkeypatch) -> str:
    key = "sk-e2e-" + secrets.token_hex(12)
    monkeypatch.setenv("E2E_KEY", key)
    return key


def test_same_rows_as_the_in_cluster_simulator(reference, tmp_path, monkeypatch, key_env):
    write_rows(tmp_path / "in.jsonl")
    env = {**os.environ, "E2E_KEY": key_env}
    fast = [SimServerProcess(["--api-key-env", "E2E_KEY", "--seed", "9"], env=env).start() for _ in range(2)]
    slow = SimServerProcess(["--tokens", "3..5"]).start()
    try:
        monkeypatch.setenv("E2E_FAST_URL", ",".join(s.url for s in fast))
        monkeypatch.setenv("E2E_SLOW_URL", slow.url)
        s = run(compile_ir(), opts(tmp_path, "http"))
        served = [ok_count(x) for x in fast] + [ok_count(slow)]
    finally:
        errs = [x.stop() for x in (*fast, slow)]
    got = by_id(tmp_path / "http.jsonl")
    assert got == reference                          # replies, extracts, routing, usage: all identical
    assert {r["_meta"]["status"] for r in got.values()} == {"ok"}
    calls = sum(a["calls"] for a in s["agents"].values())
    assert sum(served) == calls and all(served)     # every call went over HTTP; both fast URLs used
    # the API key reached the actors (the fast servers demand it) and is written nowhere
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    texts = [(tmp_path / "http.jsonl").read_text(), (tmp_path / "http.summary.json").read_text(), *errs]
    texts += [p.read_text(errors="replace") for p in logs.glob("*") if p.is_file() and p.stat().st_size < 50e6]
    assert not [t[:80] for t in texts if key_env in t]


def test_a_completions_model_calls_post_completions_with_the_same_replies(reference, tmp_path, monkeypatch,
                                                                          key_env):
    """`api = "completions"`: the agent's conversation goes as one prompt to /v1/completions."""
    write_rows(tmp_path / "in.jsonl")
    env = {**os.environ, "E2E_KEY": key_env}
    fast = SimServerProcess(["--api-key-env", "E2E_KEY", "--seed", "9"], env=env).start()
    base = SimServerProcess(["--tokens", "3..5"]).start()
    ir = compile_ir(WORKFLOW.replace('name = "slow-model"', 'name = "slow-model"\n  api = "completions"'))
    assert (ir["models"]["slow"]["api"], ir["models"]["fast"]["api"]) == ("completions", "chat")
    try:
        monkeypatch.setenv("E2E_FAST_URL", fast.url)
        monkeypatch.setenv("E2E_SLOW_URL", base.url)
        s = run(ir, opts(tmp_path, "completions"))
        routes = base.metrics()
    finally:
        fast.stop()
        base.stop()
    got = by_id(tmp_path / "completions.jsonl")
    assert s["agents"]["b"]["calls"] > 0
    assert routes.get('mx_sim_requests_total{route="/v1/completions",code="200"}') == s["agents"]["b"]["calls"]
    assert not routes.get('mx_sim_requests_total{route="/v1/chat/completions",code="200"}')
    for rid, row in got.items():      # the same replies: the hash (the IR differs) and prompt estimates aside
        want = reference[rid]
        assert {k: v for k, v in row.items() if k != "_meta"} == {k: v for k, v in want.items() if k != "_meta"}
        assert row["_meta"]["status"] == want["_meta"]["status"] == "ok"
        assert (row["_meta"]["usage"]["b"]["completion_tokens"]
                == want["_meta"]["usage"]["b"]["completion_tokens"])


def test_fault_injection_every_row_written_once(reference, tmp_path, monkeypatch, key_env):
    write_rows(tmp_path / "in.jsonl")
    ir = compile_ir()
    for m in ir["models"].values():
        m.update(timeout_s=1.0, retries=2)
    fast = SimServerProcess(["--error-rate", "0.3", "--timeout-rate", "0.05", "--throttle-rate", "0.1",
                             "--timeout-hold", "30s", "--seed", "2"]).start()
    slow = SimServerProcess(["--error-rate", "0.3", "--seed", "3"]).start()
    try:
        monkeypatch.delenv("E2E_KEY")                # this server does not ask for a key
        monkeypatch.setenv("E2E_FAST_URL", fast.url)
        monkeypatch.setenv("E2E_SLOW_URL", slow.url)
        s = run(ir, opts(tmp_path, "faults"))
        m = fast.metrics()
    finally:
        fast.stop()
        slow.stop()
    got = by_id(tmp_path / "faults.jsonl")
    assert sorted(got) == sorted(reference)          # every row written, once
    statuses = {r["_meta"]["status"] for r in got.values()}
    assert statuses == {"ok", "error"}               # with these rates, both happen
    for rid, row in got.items():
        meta = row["_meta"]
        if meta["status"] == "ok":                   # retried calls give the same replies
            assert row == reference[rid]
        else:
            assert meta["reason"] == "model_error"
            assert "3 attempts failed" in meta["detail"] and "from http://127.0.0.1:" in meta["detail"]
    assert m['mx_sim_injected_total{kind="timeout"}'] > 0 and m['mx_sim_injected_total{kind="error"}'] > 0
    assert s["by_status"]["error"] == sum(r["_meta"]["status"] == "error" for r in got.values())


@pytest.mark.slow      # the client's own test kills a server mid-run in the default suite
def test_an_endpoint_killed_mid_run(reference, tmp_path, monkeypatch, key_env):
    write_rows(tmp_path / "in.jsonl")
    env = {**os.environ, "E2E_KEY": key_env}
    args = ["--api-key-env", "E2E_KEY", "--ttft", "30ms", "--per-token", "3ms"]
    a, b = SimServerProcess(args, env=env).start(), SimServerProcess(args, env=env).start()
    slow = SimServerProcess(["--ttft", "30ms"]).start()
    out = tmp_path / "kill.jsonl"
    seen: dict = {}

    def killer() -> None:        # SIGKILL server a once a few rows are out: the rest of the run goes on
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            n = len(out.read_text().splitlines()) if out.exists() else 0
            if n >= 3:
                seen["a_served"], seen["rows_at_kill"] = ok_count(a), n
                a.proc.kill()
                return
            time.sleep(0.02)

    try:
        monkeypatch.setenv("E2E_FAST_URL", f"{a.url},{b.url}")
        monkeypatch.setenv("E2E_SLOW_URL", slow.url)
        t = threading.Thread(target=killer, daemon=True)
        t.start()
        s = run(compile_ir(), opts(tmp_path, "kill", max_in_flight=4))
        t.join(10)
        b_served = ok_count(b)
    finally:
        for x in (a, b, slow):
            x.stop()
    assert seen["a_served"] > 0 and seen["rows_at_kill"] < ROWS     # it served, then died mid-run
    got = by_id(out)
    assert got == reference                          # every row once, ok, same as the simulator
    calls_fast = sum(r["_meta"]["usage"]["a"]["calls"] for r in got.values())
    assert b_served >= calls_fast - seen["a_served"] - 4   # what a had not answered, b did
    assert s["by_status"] == {"ok": ROWS}


def test_missing_url_stops_the_run_with_the_variable_name(ray_local, tmp_path, monkeypatch):
    write_rows(tmp_path / "in.jsonl", 2)
    monkeypatch.delenv("E2E_FAST_URL", raising=False)
    monkeypatch.setenv("E2E_SLOW_URL", "http://127.0.0.1:9/v1")
    with pytest.raises(RunError, match="E2E_FAST_URL"):
        run(copy.deepcopy(compile_ir()), opts(tmp_path, "nourl"))
