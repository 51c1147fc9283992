"""One measured run of a workload: ``runtime.run`` under a :class:`RunMonitor`, plus the derived figures
(LLM tokens/s, fleet capacity and utilisation, CPU per hop by process group)."""

from __future__ import annotations

import _thread
import statistics
import threading
import uuid
from pathlib import Path
from typing import Any

from matrixlang.runtime.control.run import RunOptions, run

from .catalog import Workload
from .monitor import RunMonitor

# One simulator process hosts every simulated replica of a run: on 2 cores a second process adds no
# parallelism, only start-up time (its CPU per call is reported as the "sim" group).
SIM_ACTORS = 1

MODES: dict[str, dict[str, str]] = {
    "p2p": {"schedule": "row", "orchestrator": "p2p"},
    "batch": {"schedule": "batch", "orchestrator": "p2p"},
    "central": {"schedule": "row", "orchestrator": "central"},
}


def fleet(ir: dict, models: tuple[str, ...]) -> dict[str, dict]:
    """Per LLM model: slots (replicas x max_concurrency) and the sim latency parameters."""
    out = {}
    for m in models:
        sim = ir["models"][m]["sim"]
        out[m] = {"replicas": sim["replicas"], "max_concurrency": sim["max_concurrency"],
                  "slots": sim["replicas"] * sim["max_concurrency"], "ttft_s": sim["ttft_s"],
                  "per_token_s": sim["per_token_s"], "tokens": list(sim["tokens"])}
    return out


def capacity(f: dict, mean_tokens: float, slowdown: float = 0.5) -> tuple[float, float]:
    """(nominal, effective) tokens/s of one model's fleet.

    nominal = slots / per_token (the issue's definition: every slot decoding at the idle per-token
    speed, no time to first token). effective = what the simulator delivers when every slot is busy
    all the time: a request of T tokens on a full replica takes ttft + T * per_token * (1 + slowdown)
    (simmodel.SimCapacity), so slots * T / that. ``utilisation`` divides by the effective one (its
    limit is 1.0); the nominal ratio cannot exceed T*pt / (ttft + T*pt*(1+slowdown)).
    """
    pt = f["per_token_s"]
    nominal = f["slots"] / pt if pt > 0 else float("inf")
    dur = f["ttft_s"] + mean_tokens * pt * (1.0 + slowdown)
    effective = f["slots"] * mean_tokens / dur if dur > 0 else float("inf")
    return nominal, effective


def model_stats(summary: dict) -> dict[str, dict]:
    """Served requests, tokens and busy sequence-seconds per model, summed over the sim services."""
    out: dict[str, dict] = {}
    for s in summary.get("services", {}).values():
        for m, v in (s.get("models") or {}).items():
            d = out.setdefault(m, {"served": 0, "tokens": 0, "busy_s": 0.0, "peak_active": 0, "peak_queued": 0})
            d["served"] += v["served"]
            d["tokens"] += v["tokens"]
            d["busy_s"] += v["busy_s"]
            d["peak_active"] += v["peak_active"]
            d["peak_queued"] += v["peak_queued"]
    return out


class RunHung(RuntimeError):
    """A run did not finish within its deadline (the runtime hung: see the message)."""


def run_once(wl: Workload, mode: str, *, rows: int, in_flight: int, tmp: Path, seed: int = 0,
             overrides: dict[str, dict] | None = None, agents: dict[str, dict] | None = None,
             keep_monitor: bool = False, deadline_s: float = 900.0, sample_s: float = 0.25, **opts: Any) -> dict:
    """Run ``rows`` rows of ``wl`` in ``mode`` (p2p | batch | central); returns the measured figures
    (with the :class:`RunMonitor` under ``_monitor`` when ``keep_monitor``). A run still going after
    ``deadline_s`` is interrupted (its actors are killed) and raises :class:`RunHung`. ``sample_s`` is
    the monitor's sampling period (steady-state figures need several samples within the run)."""
    ir = wl.ir(overrides, agents)
    inp = wl.write_input(tmp / f"{wl.name}-{rows}-{seed}.jsonl", rows, seed)
    out = tmp / f"{wl.name}.out.jsonl"
    run_id = f"b{uuid.uuid4().hex[:8]}"
    opts.setdefault("sim_actors", SIM_ACTORS)
    o = RunOptions(input=str(inp), output=str(out), backend="sim", max_in_flight=in_flight, seed=seed,
                   overwrite=True, progress="off", print_summary=False, run_id=run_id, **MODES[mode], **opts)
    fired = threading.Event()

    def interrupt() -> None:
        fired.set()
        _thread.interrupt_main()

    timer = threading.Timer(deadline_s, interrupt)
    timer.daemon = True
    timer.start()
    try:
        with RunMonitor(run_id, interval_s=sample_s) as mon:
            s = run(ir, o)
    except KeyboardInterrupt:
        if fired.is_set():
            raise RunHung(f"{wl.name} {mode} ({rows} rows, {in_flight} in flight, run id {run_id}) did not "
                          f"finish in {deadline_s:g} s") from None
        raise
    finally:
        timer.cancel()
    res = derive(wl, ir, s, mon, mode, out)
    if keep_monitor:
        res["_monitor"] = mon
    return res


def derive(wl: Workload, ir: dict, s: dict, mon: RunMonitor, mode: str, out: Path) -> dict:
    """The figures of one run from its summary and monitor."""
    el = s["elapsed_s"]
    ms = model_stats(s)
    fl = fleet(ir, wl.llm_models)
    llm_tokens = sum(ms.get(m, {}).get("tokens", 0) for m in wl.llm_models)
    per_model = {}
    cap_nom = cap_eff = 0.0
    for m, f in fl.items():
        st = ms.get(m, {"served": 0, "tokens": 0, "busy_s": 0.0})
        mean_tok = st["tokens"] / st["served"] if st["served"] else sum(f["tokens"]) / 2
        nom, eff = capacity(f, mean_tok)
        cap_nom += nom
        cap_eff += eff
        tps = st["tokens"] / el if el > 0 else 0.0
        per_model[m] = {**f, **st, "mean_tokens": mean_tok, "tokens_per_s": tps, "capacity_nominal": nom,
                        "capacity_effective": eff, "utilisation": tps / eff if eff else None,
                        "occupancy": st["busy_s"] / (f["slots"] * el) if el > 0 else None}
    tps = llm_tokens / el if el > 0 else 0.0
    steady = mon.steady_tokens_per_s(wl.llm_models)
    cpu = mon.summary(el)
    steps = s["steps"]
    c = cpu["cpu_s"]
    agents_cpu = sum(v for k, v in c.items() if k.startswith("agent:"))
    sim_calls = sum(v["served"] for v in ms.values())
    steps_hist = _steps_of(out)
    return {
        "workload": wl.name, "mode": mode, "rows": s["rows"], "in_flight": s["max_in_flight"],
        "peak_in_flight": s["peak_in_flight"], "by_status": s["by_status"], "by_reason": s["by_reason"],
        "elapsed_s": el, "rows_per_s": s["rows_per_s"], "steps": steps, "hops_per_s": s["hops_per_s"],
        "llm_tokens": llm_tokens, "tokens_per_s": tps, "all_tokens_per_s": s["tokens_per_s"],
        "steady_tokens_per_s": steady,
        "capacity_nominal": cap_nom, "capacity_effective": cap_eff,
        "utilisation": tps / cap_eff if cap_eff else None,
        "steady_utilisation": steady / cap_eff if steady and cap_eff else None,
        "utilisation_nominal": tps / cap_nom if cap_nom else None,
        "models": per_model, "transport": s["transport"], "bytes_per_hop": s.get("bytes_per_hop"),
        "cpu": cpu,
        "cpu_per_hop_ms": {
            "agents": 1e3 * agents_cpu / steps if steps else None,
            "sim": 1e3 * c.get("sim", 0.0) / sim_calls if sim_calls else None,
            "coordinator": 1e3 * c.get("coordinator", 0.0) / steps if steps and "coordinator" in c else None,
            "sink_per_row": 1e3 * c.get("sink", 0.0) / s["rows"] if s["rows"] else None,
            "driver_per_row": 1e3 * c.get("driver", 0.0) / s["rows"] if s["rows"] else None,
            "all_run_processes": 1e3 * cpu["run_cpu_s"] / steps if steps else None,
        },
        "steps_per_row": {"mean": statistics.fmean(steps_hist) if steps_hist else None,
                          "max": max(steps_hist) if steps_hist else None},
        "wall_s": s["wall_s"],
    }


def _steps_of(out: Path) -> list[int]:
    import json

    steps = []
    try:
        with out.open(encoding="utf-8") as f:
            for line in f:
                steps.append(json.loads(line)["_meta"]["steps"])
    except (OSError, ValueError, KeyError):
        return []
    return steps
