"""Item 2: utilisation (achieved LLM tokens/s ÷ the fleet's capacity) as offered concurrency grows.

coral on one pool of ``slots`` sequences; offered concurrency (max in flight) is a multiple of the
slots. Two utilisations per run: over the whole run (admission ramp and drain tail included), and in
steady state (between 10% and 80% of the run's tokens, from the sim services' counters sampled
every 0.5 s). Capacity is the effective one (measure.capacity): the limit is 1.0."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .catalog import WORKLOADS
from .config import SuiteConfig
from .measure import run_once
from .stats import spread

KEYS = ("utilisation", "steady_utilisation", "utilisation_nominal", "tokens_per_s", "rows_per_s")


def run_utilisation(cfg: SuiteConfig, tmp: Path, log: Callable[[str], None]) -> dict:
    wl = WORKLOADS["coral"]
    ov = cfg.overrides(wl, wl.ir())
    slots = wl.ir(ov)["models"]["llm"]["sim"]
    slots = slots["replicas"] * slots["max_concurrency"]
    levels = []
    for mult in cfg.util_levels:
        conc = max(1, round(slots * mult))
        rows = max(cfg.util_rows_min, 2 * conc)
        runs = []
        for rep in range(cfg.util_repeats):
            r = run_once(wl, "p2p", rows=rows, in_flight=conc, tmp=tmp, seed=100 + rep, overrides=ov,
                         sample_s=cfg.sample_s)
            runs.append(r)
            log(f"utilisation in flight {conc:5} ({mult:g} x slots) rep {rep}: util {r['utilisation']:.2f}  "
                f"steady {r['steady_utilisation'] or float('nan'):.2f}  run CPU {r['cpu']['run_cpu_util']:.2f}  "
                f"machine {r['cpu']['machine_busy']:.2f}")
        levels.append({"in_flight": conc, "x_slots": mult, "rows": rows,
                       **{k: spread(r[k] for r in runs) for k in KEYS},
                       "run_cpu_util": spread(r["cpu"]["run_cpu_util"] for r in runs),
                       "machine_busy": spread(r["cpu"]["machine_busy"] for r in runs),
                       "loadavg": [r["cpu"]["loadavg_start"][0] for r in runs],
                       "runs": runs})
    best = max((lv["steady_utilisation"]["median"] or 0.0) for lv in levels)
    return {"workload": "coral", "slots": slots, "levels": levels, "best_steady_utilisation": best,
            "capacity_effective": levels[0]["runs"][0]["capacity_effective"],
            "capacity_nominal": levels[0]["runs"][0]["capacity_nominal"]}
