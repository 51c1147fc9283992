"""Item 1: row-level peer-to-peer vs ``--schedule batch`` vs ``--orchestrator central``, at equal
concurrency, on each workload. Each repeat runs the three modes back to back on the same rows and
seed (identical work: the simulated replies depend only on seed, row and step), so its ratios compare
runs made under the same machine load; the repeats use different seeds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .catalog import SCHEDULING_WORKLOADS, WORKLOADS
from .config import SuiteConfig
from .measure import MODES, run_once
from .stats import ratio, spread

METRICS = ("tokens_per_s", "rows_per_s", "steady_tokens_per_s")


def run_scheduling(cfg: SuiteConfig, tmp: Path, log: Callable[[str], None],
                   workloads: tuple[str, ...] = SCHEDULING_WORKLOADS) -> dict:
    """Per workload: every run, per-mode spreads and the p2p/batch and p2p/central ratios."""
    out: dict[str, dict] = {}
    for name in workloads:
        wl = WORKLOADS[name]
        ov = cfg.overrides(wl, wl.ir())
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        for rep in range(cfg.repeats):
            for mode in MODES:
                r = run_once(wl, mode, rows=cfg.rows[name], in_flight=cfg.in_flight, tmp=tmp, seed=rep,
                             overrides=ov, sample_s=cfg.sample_s)
                runs[mode].append(r)
                log(f"scheduling {name:9} {mode:8} rep {rep}: {r['elapsed_s']:6.1f} s  "
                    f"{r['rows_per_s']:7.1f} rows/s  {r['tokens_per_s']:9,.0f} tok/s  "
                    f"util {r['utilisation']:.2f}  run CPU {r['cpu']['run_cpu_util']:.2f}  "
                    f"machine {r['cpu']['machine_busy']:.2f}")
        ratios = {}
        for base in ("batch", "central"):
            for metric in METRICS:
                ratios[f"p2p/{base} {metric}"] = spread(
                    ratio(p[metric], b[metric]) for p, b in zip(runs["p2p"], runs[base], strict=True))
        per_mode = {m: {k: spread(r[k] for r in rs) for k in
                        (*METRICS, "utilisation", "steady_utilisation", "elapsed_s", "hops_per_s")}
                    | {"run_cpu_util": spread(r["cpu"]["run_cpu_util"] for r in rs),
                       "machine_busy": spread(r["cpu"]["machine_busy"] for r in rs),
                       "cpu_per_hop_ms": spread(r["cpu_per_hop_ms"]["all_run_processes"] for r in rs)}
                    for m, rs in runs.items()}
        first = runs["p2p"][0]
        out[name] = {"description": wl.description, "rows": cfg.rows[name], "in_flight": cfg.in_flight,
                     "fleet": {m: {k: v for k, v in d.items() if k in ("replicas", "max_concurrency", "slots",
                                                                       "ttft_s", "per_token_s", "tokens")}
                               for m, d in first["models"].items()},
                     "steps_per_row": first["steps_per_row"], "by_reason": first["by_reason"],
                     "ratios": ratios, "per_mode": per_mode, "runs": runs}
    return out
