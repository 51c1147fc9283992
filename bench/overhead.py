"""Item 3: hop overhead. A zero-latency workflow (bench/workloads/pingpong.mx: two agents pass each
row back and forth, the simulated model answers at once, so the run is bound by the runtime's own
work) against a raw per-message Ray actor relay of messages of the same pickled size, measured in
the same repeat; with and without coalescing, and centrally orchestrated. Also: the latency
coalescing adds to one hop (relay, a lone message and under load, p50/p99), and the CPU seconds
each process group spends per hop (the scale model's calibration)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from . import hops
from .config import SuiteConfig
from .monitor import RunMonitor
from .programs import pingpong
from .stats import ratio, spread


def _workflow(ir: dict, rows: list[dict], tmp: Path, in_flight: int, **kw) -> dict:
    run_id = f"h{uuid.uuid4().hex[:8]}"
    with RunMonitor(run_id) as mon:
        s = hops.run_rows(ir, rows, str(tmp), max_in_flight=in_flight, run_id=run_id, **kw)
    cpu = mon.summary(s["elapsed_s"])
    steps, c = s["steps"], cpu["cpu_s"]
    per_hop = {g: 1e3 * v / steps for g, v in c.items()} if steps else {}
    per_hop["agents"] = sum(v for g, v in per_hop.items() if g.startswith("agent:"))
    per_hop["all_run_processes"] = 1e3 * cpu["run_cpu_s"] / steps if steps else None
    return {"hops_per_s": s["hops_per_s"], "steps": steps, "rows": s["rows"], "elapsed_s": s["elapsed_s"],
            "transport": s["transport"], "cpu": cpu, "cpu_per_hop_ms": per_hop,
            "driver_ms_per_row": 1e3 * c.get("driver", 0.0) / s["rows"] if s["rows"] else None,
            "sink_ms_per_row": 1e3 * c.get("sink", 0.0) / s["rows"] if s["rows"] else None}


def run_overhead(cfg: SuiteConfig, tmp: Path, log: Callable[[str], None]) -> dict:
    ir = pingpong(cfg.hop_hops)
    size = hops.mean_message_bytes(ir)
    payload = max(0, size - 60)
    rows = [{"id": i} for i in range(cfg.hop_rows)]
    k = cfg.hop_in_flight
    reps: list[dict] = []
    for rep in range(cfg.repeats):
        r = {"workflow": _workflow(ir, rows, tmp, k),
             "workflow_no_coalescing": _workflow(ir, rows[:cfg.hop_rows_nocoalesce], tmp, k, coalesce=False),
             "workflow_central": _workflow(ir, rows, tmp, k, orchestrator="central"),
             "workflow_central_no_coalescing": _workflow(ir, rows[:cfg.hop_rows_nocoalesce], tmp, k,
                                                         orchestrator="central", coalesce=False),
             "raw_relay": hops.relay("raw", k, cfg.hop_hops, payload),
             "coalesced_relay": hops.relay("coalesced", k, cfg.hop_hops, payload),
             "raw_relay_lone": hops.relay("raw", 1, 200, payload),
             "coalesced_relay_lone": hops.relay("coalesced", 1, 200, payload)}
        if cfg.hop_lone:
            lone = {c: hops.run_rows(ir, rows[:3], str(tmp), max_in_flight=1, coalesce=c) for c in (True, False)}
            r["lone_row_ms_per_step"] = {("coalesced" if c else "not_coalesced"): 1e3 * s["elapsed_s"] / max(s["steps"], 1)
                                         for c, s in lone.items()}
        raw = r["raw_relay"]["hops_per_s"]
        r["ratios"] = {"workflow/raw": ratio(r["workflow"]["hops_per_s"], raw),
                       "workflow_no_coalescing/raw": ratio(r["workflow_no_coalescing"]["hops_per_s"], raw),
                       "workflow_central/raw": ratio(r["workflow_central"]["hops_per_s"], raw),
                       "workflow_central_no_coalescing/raw": ratio(r["workflow_central_no_coalescing"]["hops_per_s"], raw),
                       "coalesced_relay/raw": ratio(r["coalesced_relay"]["hops_per_s"], raw)}
        r["added_latency_ms"] = {
            "lone_p50": r["coalesced_relay_lone"]["p50_ms"] - r["raw_relay_lone"]["p50_ms"],
            "lone_p99": r["coalesced_relay_lone"]["p99_ms"] - r["raw_relay_lone"]["p99_ms"],
            "loaded_p50": r["coalesced_relay"]["p50_ms"] - r["raw_relay"]["p50_ms"],
            "loaded_p99": r["coalesced_relay"]["p99_ms"] - r["raw_relay"]["p99_ms"]}
        reps.append(r)
        log(f"overhead rep {rep}: workflow {r['workflow']['hops_per_s']:,.0f} hops/s "
            f"({r['ratios']['workflow/raw']:.2f}x raw relay {raw:,.0f}); no coalescing "
            f"{r['workflow_no_coalescing']['hops_per_s']:,.0f}; central {r['workflow_central']['hops_per_s']:,.0f}; "
            f"coalesced relay {r['coalesced_relay']['hops_per_s']:,.0f}")
    keys = ("workflow/raw", "workflow_no_coalescing/raw", "workflow_central/raw", "workflow_central_no_coalescing/raw",
            "coalesced_relay/raw")
    flows = ("workflow", "workflow_no_coalescing", "workflow_central", "workflow_central_no_coalescing")
    summary = {
        "ratios": {key: spread(r["ratios"][key] for r in reps) for key in keys},
        "hops_per_s": {w: spread(r[w]["hops_per_s"] for r in reps) for w in (*flows, "raw_relay", "coalesced_relay")},
        "latency_ms": {w: {q: spread(r[w][q] for r in reps) for q in ("p50_ms", "p99_ms")}
                       for w in ("raw_relay_lone", "coalesced_relay_lone", "raw_relay", "coalesced_relay")},
        "added_latency_ms": {q: spread(r["added_latency_ms"][q] for r in reps) for q in reps[0]["added_latency_ms"]},
        "lone_row_ms_per_step": {q: spread(r["lone_row_ms_per_step"][q] for r in reps if "lone_row_ms_per_step" in r)
                                 for q in ("coalesced", "not_coalesced")},
        "cpu_per_hop_ms": {w: {g: spread(r[w]["cpu_per_hop_ms"].get(g) for r in reps)
                               for g in reps[0][w]["cpu_per_hop_ms"]} for w in flows},
        "driver_ms_per_row": spread(r["workflow"]["driver_ms_per_row"] for r in reps),
        "sink_ms_per_row": spread(r["workflow"]["sink_ms_per_row"] for r in reps),
        "cpu_util": {w: spread(r[w]["cpu"]["run_cpu_util"] for r in reps) for w in flows},
    }
    return {"message_bytes": size, "hops": cfg.hop_hops, "rows": cfg.hop_rows, "in_flight": k,
            "summary": summary, "repeats": reps}
