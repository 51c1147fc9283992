"""Killing actors mid-run on real Ray: no row is lost, none is written twice."""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from pathlib import Path

import pytest
import ray
from matrixlang.runtime.control.run import RunOptions, run
from support import ir_fixtures as F

pytestmark = pytest.mark.ray


def slow_student() -> dict:
    """teacher (fast model) -> student (a model taking 2 s per call) -> end: rows wait at the student."""
    ir = copy.deepcopy(F.coral())
    ir["models"]["slow"] = copy.deepcopy(ir["models"]["llm"])
    ir["models"]["slow"]["sim"].update(ttft_s=2.0, per_token_s=0.0)
    ir["agents"]["student"]["model"] = "slow"
    ir["states"]["student"]["transitions"] = [F.tr("end")]
    return F.finish(ir)


def start_run(tmp_path: Path, ir: dict, n: int, run_id: str, **kw) -> tuple[threading.Thread, dict, Path]:
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"r{i}", "question": f"q {i}", "choices": ["a", "b"]}) + "\n"
                           for i in range(n)))
    out = tmp_path / "out.jsonl"
    result: dict = {}

    def target() -> None:
        try:
            result["summary"] = run(ir, RunOptions(input=str(inp), output=str(out), backend="sim",
                                                   progress="off", print_summary=False, run_id=run_id, **kw))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, result, out


def wait_for(cond, what: str, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def kill_when_holding(name: str, at_least: int, result: dict) -> set:
    """Kill (Ray restarts it) the named agent once it holds ``at_least`` rows; returns the rows it held."""
    def lookup():
        try:
            return ray.get_actor(name)
        except ValueError:     # not created yet
            return None

    wait_for(lambda: lookup() is not None or "error" in result, f"actor {name}")
    agent = lookup()
    wait_for(lambda: len(ray.get(agent.held_ids.remote())) >= at_least or "error" in result, "held rows")
    held = set(ray.get(agent.held_ids.remote()))
    ray.kill(agent, no_restart=False)       # a crash: its rows are gone
    return held


def test_killing_an_agent_mid_run_loses_no_row_and_doubles_none(ray_local, tmp_path):
    n = 30
    t, result, out = start_run(tmp_path, slow_student(), n, "faults1", max_in_flight=n, idle_scan_s=2.0)
    held = kill_when_holding("mx-faults1:agent:student:0", 20, result)
    t.join(timeout=300)
    assert not t.is_alive(), "the run did not finish"
    assert "error" not in result, result.get("error")
    rows = {r["_meta"]["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert out.read_text().count("\n") == n                        # no line written twice
    assert sorted(rows) == sorted(f"r{i}" for i in range(n))       # every row
    assert {r["_meta"]["status"] for r in rows.values()} == {"ok"}
    rerun = {k for k, r in rows.items() if r["_meta"]["attempt"] == 1}
    assert held <= rerun                  # the rows in the dead actor were re-run from the start
    assert all(rows[k]["_meta"]["steps"] == 2 for k in rerun)
    s = result["summary"]
    assert s["readmitted"] >= len(held) and s["actor_restarts"] >= 1 and s["lost"] == 0


def test_killing_a_colocated_agent_mid_run_loses_no_row_and_doubles_none(ray_local, tmp_path):
    """Teacher and student in the same actors: a crash loses rows of both roles at once."""
    n = 30
    t, result, out = start_run(tmp_path, slow_student(), n, "faults4", max_in_flight=n, idle_scan_s=2.0,
                               colocate="all", replicas={"teacher": 2, "student": 2})
    held = kill_when_holding("mx-faults4:agent:teacher+student:0", 8, result)
    t.join(timeout=300)
    assert not t.is_alive(), "the run did not finish"
    assert "error" not in result, result.get("error")
    rows = {r["_meta"]["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert out.read_text().count("\n") == n and sorted(rows) == sorted(f"r{i}" for i in range(n))
    assert {r["_meta"]["status"] for r in rows.values()} == {"ok"}
    assert held <= {k for k, r in rows.items() if r["_meta"]["attempt"] == 1}
    s = result["summary"]
    assert s["colocated"] == [["teacher", "student"]] and s["readmitted"] >= len(held) and s["lost"] == 0


def test_a_row_lost_more_than_row_attempts_times_is_written_as_error(ray_local, tmp_path):
    ir = slow_student()
    ir["limits"]["row_attempts"] = 0             # no re-run allowed: a lost row is written as error
    ir = F.finish(ir)
    t, result, out = start_run(tmp_path, ir, 12, "faults2", max_in_flight=12, idle_scan_s=2.0)
    held = kill_when_holding("mx-faults2:agent:student:0", 8, result)
    t.join(timeout=300)
    assert "error" not in result, result.get("error")
    rows = {r["_meta"]["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(rows) == sorted(f"r{i}" for i in range(12))
    errors = {k for k, r in rows.items() if r["_meta"]["status"] == "error"}
    assert held <= errors
    assert {(rows[k]["_meta"]["reason"], rows[k]["answer"]) for k in errors} == {("lost", None)}
    assert "row_attempts = 0" in rows[next(iter(errors))]["_meta"]["detail"]
    assert result["summary"]["lost"] == len(errors)


@pytest.mark.slow          # run with -m slow
def test_killing_the_sink_and_the_sim_service_mid_run(ray_local, tmp_path):
    n = 30
    t, result, out = start_run(tmp_path, slow_student(), n, "faults3", max_in_flight=10, idle_scan_s=2.0)
    wait_for(lambda: lines(out) >= 1 or "error" in result, "the first rows")
    ray.kill(ray.get_actor("mx-faults3:sink"), no_restart=False)     # the writer restarts, re-reads the file
    kill_when_holding("mx-faults3:agent:student:0", 5, result)       # (just to wait for busy students)
    sims = [ray.get_actor(f"mx-faults3:sim:{i}") for i in range(2) if _exists(f"mx-faults3:sim:{i}")]
    for sim in sims:
        ray.kill(sim, no_restart=False)                              # queued requests are lost
    t.join(timeout=300)
    assert not t.is_alive(), "the run did not finish"
    assert "error" not in result, result.get("error")
    text = out.read_text()
    ids = [json.loads(x)["_meta"]["id"] for x in text.splitlines()]
    assert sorted(ids) == sorted(f"r{i}" for i in range(n))         # every row exactly once
    assert {json.loads(x)["_meta"]["status"] for x in text.splitlines()} == {"ok"}
    s = result["summary"]
    assert s["rows"] == n and s["actor_restarts"] >= 2 and s["by_status"] == {"ok": n}


def _exists(name: str) -> bool:
    try:
        ray.get_actor(name)
        return True
    except ValueError:
        return False



@ray.remote(max_restarts=-1)
class _DiesInItsFirstCall:
    """Dies (os._exit) inside its first call, as an actor SIGKILLed mid-call; its next incarnation answers."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def value(self) -> int:
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return 42


def test_a_call_to_an_actor_that_dies_in_it_is_made_again_once_it_restarts(ray_local, tmp_path):
    """Found by the chaos run: the sink SIGKILLed while the driver's `done_ids` call was in flight ended
    `mxc run` with an internal error (ActorUnavailableError). run.py's calls to the sink at the start and
    the end of a run (and the start-up pings) are made again while the actor restarts."""
    from matrixlang.runtime.control.run import RunError, _get_restarting

    with pytest.raises(ray.exceptions.RayActorError):         # the control: a plain ray.get fails
        ray.get(_DiesInItsFirstCall.remote(str(tmp_path / "a")).value.remote())
    assert _get_restarting(_DiesInItsFirstCall.remote(str(tmp_path / "b")).value.remote, "it") == 42
    gone = _DiesInItsFirstCall.options(max_restarts=0).remote(str(tmp_path / "c"))
    with pytest.raises(RunError, match="within 3 s"):
        _get_restarting(gone.value.remote, "the sink", limit_s=3.0)
