"""Smoke tests of the benchmark suite (bench/): real runs on tiny sizes, no timing assertions.

They check the structure of the results, that every ratio is finite and positive, that the three
scheduling modes do the same work, that the monitor finds the run's processes, and the scale
model's behaviour (deterministic: a seeded discrete-event simulation)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.config import SUITES  # noqa: E402
from bench.measure import capacity  # noqa: E402
from bench.memory import fit  # noqa: E402
from bench.scale_model import Costs, Scenario, simulate, workload_traces  # noqa: E402


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _ratios(d: dict) -> list[dict]:
    """Every spread dict under a ``ratios`` key, recursively."""
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            if k == "ratios" and isinstance(v, dict):
                out += [s for s in v.values() if isinstance(s, dict) and "median" in s]
            else:
                out += _ratios(v)
    elif isinstance(d, list):
        for v in d:
            out += _ratios(v)
    return out


@pytest.mark.ray
def test_scheduling_modes_do_the_same_work(ray_local, tmp_path):
    from bench.scheduling import run_scheduling

    cfg = SUITES["tiny"]
    res = run_scheduling(cfg, tmp_path, lambda m: None, workloads=("coral",))["coral"]
    runs = {m: rs[0] for m, rs in res["runs"].items()}
    assert set(runs) == {"p2p", "batch", "central"}
    for r in runs.values():
        assert r["rows"] == cfg.rows["coral"]
        assert r["peak_in_flight"] <= cfg.in_flight
        assert r["cpu"]["cpu_s"].keys() >= {"driver", "agent:teacher", "agent:student", "sim", "sink"}
        assert r["utilisation"] is not None and 0 < r["utilisation"] <= 1.0
    assert "coordinator" in runs["central"]["cpu"]["cpu_s"]
    assert "coordinator" not in runs["p2p"]["cpu"]["cpu_s"]
    # same seed and rows: every mode generates the same tokens over the same steps
    assert len({r["llm_tokens"] for r in runs.values()}) == 1
    assert len({r["steps"] for r in runs.values()}) == 1
    for name in ("p2p/batch tokens_per_s", "p2p/batch rows_per_s", "p2p/central tokens_per_s"):
        assert _finite_positive(res["ratios"][name]["median"]), name


def test_capacity_and_fit():
    f = {"slots": 64, "per_token_s": 0.002, "ttft_s": 0.0}
    nominal, effective = capacity(f, 100)
    assert nominal == pytest.approx(32000)
    assert effective == pytest.approx(nominal / 1.5)      # full replicas decode 1.5x slower
    assert capacity({**f, "ttft_s": 0.1}, 100)[1] < effective
    assert fit([1, 2, 3], [5, 7, 9]) == pytest.approx((2.0, 3.0))


def test_scale_model_behaviour():
    traces, eng = workload_traces("coral", 200)
    assert all(t and all(m == "llm" and tok > 0 for m, tok in t) for t in traces)
    costs = Costs(agent_transport_s=0.0005, coord_hop_s=0.01, driver_row_s=0.0002, sink_row_s=0.0002,
                  engine_step_s={"coral": eng})
    common = {"warm_s": 10.0, "measure_s": 10.0, "rows_per_node": 100}
    p2p = [simulate("coral", traces, costs, Scenario(nodes=n, mode="p2p", **common)) for n in (1, 4)]
    cen = [simulate("coral", traces, costs, Scenario(nodes=n, mode="central", **common)) for n in (1, 4)]
    assert p2p[1]["tokens_per_s"] > 3 * p2p[0]["tokens_per_s"]          # P2P scales with nodes
    assert cen[1]["utilisation"]["coordinator"] > cen[0]["utilisation"]["coordinator"]
    assert cen[1]["hops_per_s"] <= 1.0 / costs.coord_hop_s * 1.01       # the hub's cap
    assert cen[1]["utilisation"]["coordinator"] >= 0.95                  # saturated at 4 nodes
    assert cen[1]["tokens_per_s"] < p2p[1]["tokens_per_s"]
    again = simulate("coral", traces, costs, Scenario(nodes=4, mode="p2p", **common))
    assert again["tokens_per_s"] == p2p[1]["tokens_per_s"]              # seeded: deterministic


def test_report_and_plots_from_results(tmp_path):
    from bench import plots, report

    traces, eng = workload_traces("coral", 50)
    sec = {"scale_model": _tiny_scale_section(traces, eng)}
    res = {"suite": "t", "git": {"commit": "0" * 40}, "machine": {"cpus": 2, "loadavg": [1.0, 1.0, 1.0]}, "sections": sec}
    md = report.markdown(res)
    assert "MODEL coral" in md and md.count("\n") >= 4
    paths = plots.make_plots(res, tmp_path)
    assert [p.name for p in paths] == ["t_scale_model.png"]
    assert paths[0].stat().st_size > 10_000


def _tiny_scale_section(traces, eng) -> dict:
    from bench.scale_model import MODES_MODELLED

    costs = Costs(0.0005, 0.002, 0.0002, 0.0002, {"coral": eng}, agent_transport_1msg_s=0.002, coord_hop_1msg_s=0.02)
    curves = {"coral": {c: [simulate("coral", traces, costs, Scenario(nodes=n, mode=m, per_message=pm, warm_s=3,
                                                                     measure_s=3, rows_per_node=50)) for n in (1, 2)]
                        for c, (m, pm) in MODES_MODELLED.items()}}
    sat = next((p["nodes"] for p in curves["coral"]["central_per_message"] if p["utilisation"]["coordinator"] >= 0.95),
               None)
    assert sat == 2        # 50 rows per node: ~40 hops/s per node against a 50 hops/s hub
    return {"nodes": [1, 2], "curves": curves,
            "findings": {"coral": {"coordinator_saturates_at_nodes": None, "hub_with_step_logic_saturates_at_nodes": None,
                                   "coordinator_per_message_saturates_at_nodes": sat, "central_hops_per_s_cap": 500.0,
                                   "central_per_message_hops_per_s_cap": 50.0, "central_full_hops_per_s_cap": 450.0,
                                   "driver_rows_per_s_cap": 5000.0, "p2p/central tokens_per_s at 2 nodes": 1.0}}}


@pytest.mark.slow
def test_tiny_suite_end_to_end(tmp_path):
    """The whole suite (every section) on tiny sizes, as `python -m bench` runs it."""
    p = subprocess.run([sys.executable, "-m", "bench", "--suite", "tiny", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "tiny.json").read_text())
    assert set(res["sections"]) == {"scheduling", "utilisation", "overhead", "memory", "offload", "scale_model"}
    assert res["machine"]["cpus"] >= 1 and len(res["machine"]["loadavg"]) == 3
    ratios = _ratios(res["sections"])
    assert len(ratios) >= 15
    assert all(_finite_positive(s["median"]) for s in ratios)
    mem = res["sections"]["memory"]
    assert [lv["rows"] for lv in mem["levels"]] == list(SUITES["tiny"].mem_levels)
    assert all(lv["waiting_at_once"] == lv["rows"] for lv in mem["levels"])
    off = res["sections"]["offload"]["variants"]["reads_last"]["bytes_per_hop"]
    assert off["offload"]["median"] < off["inline"]["median"]
    for name in ("tiny_utilisation.png", "tiny_throughput_by_mode.png", "tiny_scale_model.png", "tiny_table.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert "p2p / batch" in p.stdout


def test_suite_configs_are_consistent():
    for cfg in SUITES.values():
        assert cfg.repeats >= 1 and cfg.in_flight >= 1
        assert set(cfg.rows) == {"coral", "curation", "tooluse"}
        assert list(cfg.mem_levels) == sorted(cfg.mem_levels)
    assert SUITES["full"].repeats >= 3
    assert dataclasses.replace(SUITES["quick"], repeats=2).repeats == 2


def test_scale_model_several_drivers():
    """Driver shards: each on a core of its own, each paying the measured growth per row it admits."""
    from bench.scale_model import driver_ceiling, driver_growth, driver_row_cost

    traces, eng = workload_traces("coral", 200)
    costs = Costs(agent_transport_s=0.0001, coord_hop_s=0.001, driver_row_s=0.05, sink_row_s=0.0001,
                  engine_step_s={"coral": eng}, driver_growth={1: 1.0, 2: 1.5, 4: 3.0})
    assert driver_ceiling(costs, 1) == pytest.approx(20.0) and driver_ceiling(costs, 2) == pytest.approx(80 / 3)
    assert driver_row_cost(costs, 3) == pytest.approx(0.05 * 2.25)          # between the measured counts
    common = {"warm_s": 40.0, "measure_s": 20.0, "rows_per_node": 1000}   # past the initial fill, driver-bound
    one, two = (simulate("coral", traces, costs, Scenario(nodes=1, drivers=n, **common)) for n in (1, 2))
    assert one["rows_per_s"] <= 20.0 * 1.15 and one["utilisation"]["driver"] >= 0.95   # the driver's cap
    assert two["rows_per_s"] > 1.2 * one["rows_per_s"] and two["utilisation"]["driver"] >= 0.95
    g = driver_growth()                      # bench/results/drivers.json, as committed
    assert g[1] == 1.0 and all(v > 0 for v in g.values())


def test_drivers_bench_window_and_fit(tmp_path):
    from bench.drivers import Sampler, fit

    s = Sampler("x", tmp_path / "out.jsonl", 2)
    for i in range(11):          # 100 rows/s; main 0.1 ms/row, two shards 0.2 ms/row together
        s.samples.append({"t": i * 1.0, "rows": 100 * i, "cpu": {"main": 0.01 * i, "driver": 0.02 * i, "sink": 0.0},
                          "machine": (i, 2 * i)})
    w = s.window(1000)
    assert w["rows_per_s"] == pytest.approx(100) and w["machine_busy"] == pytest.approx(0.5)
    assert w["driver_cpu_ms_per_row"] == pytest.approx({"main": 0.1, "shards": 0.2, "total": 0.3})
    assert fit([(1, 3.0), (2, 5.0), (4, 9.0)]) == pytest.approx((1.0, 2.0))
