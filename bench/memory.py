"""Item 4: memory per in-flight row at 1k / 5k / 10k rows in flight.

Method: ``hold.mx`` rows (a ~1 KB message: a 500-character question plus a ~450-character first
reply, below the offload threshold, so nothing is in the object store) all wait on one long
simulated call, so every admitted row is in flight at once for ``hold_s`` seconds. Each level runs
in a fresh driver process attached to the same Ray cluster (so the driver's heap holds nothing from
earlier runs). The monitor samples the resident memory (RSS, /proc/PID/statm) of the run's
processes: the driver (its growth during the run), the agent actors, the sim service and the sink.
The peak sum is regressed on the number of rows that were waiting at once (the sim service's peak
of concurrent requests): the slope is the memory one more in-flight row costs, the intercept the
run's fixed cost. RSS counts Python's heap as it grows (freed memory is not always given back to
the OS), so it bounds live bytes from above.

    python -m bench.memory --address HOST:PORT --rows N --hold-s S   # one level, prints JSON
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .config import SuiteConfig

ROOT = Path(__file__).resolve().parent.parent


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


def measure_level(rows: int, hold_s: float, tmp: Path) -> dict:
    """One level in this process (already connected to Ray): peak RSS by process group."""
    from .catalog import WORKLOADS
    from .measure import run_once

    r = run_once(WORKLOADS["hold"], "p2p", rows=rows, in_flight=rows, tmp=tmp,
                 overrides={"slow": {"ttft_s": hold_s}}, keep_monitor=True)
    mon = r.pop("_monitor")
    groups = mon.rss_by_group()
    groups.pop("ray_other", None)
    groups["driver_growth"] = mon.driver_rss_max - mon.driver_rss0
    return {"rows": rows, "waiting_at_once": r["models"]["slow"]["peak_active"],
            "peak_in_flight": r["peak_in_flight"], "rss_bytes": sum(groups.values()), "rss_by_group": groups,
            "elapsed_s": r["elapsed_s"], "by_status": r["by_status"], "loadavg": r["cpu"]["loadavg_start"],
            "run_cpu_util": r["cpu"]["run_cpu_util"]}


def run_memory(cfg: SuiteConfig, tmp: Path, log: Callable[[str], None]) -> dict:
    import ray

    address = ray.get_runtime_context().gcs_address
    levels = []
    for n in cfg.mem_levels:
        p = subprocess.run([sys.executable, "-m", "bench.memory", "--address", address, "--rows", str(n),
                            "--hold-s", str(cfg.hold_s)], cwd=ROOT, capture_output=True, text=True,
                           timeout=600 + 4 * cfg.hold_s)
        if p.returncode != 0:
            raise RuntimeError(f"memory level {n} failed: {p.stderr[-3000:]}")
        lv = json.loads(p.stdout.strip().splitlines()[-1])
        levels.append(lv)
        log(f"memory {n:6} rows: {lv['waiting_at_once']} waiting at once, {lv['rss_bytes'] / 2**20:7.1f} MiB "
            f"({', '.join(f'{g} {v / 2**20:.0f}' for g, v in sorted(lv['rss_by_group'].items()))})")
    xs = [float(lv["waiting_at_once"]) for lv in levels]
    ys = [float(lv["rss_bytes"]) for lv in levels]
    slope, intercept = fit(xs, ys) if len(xs) > 1 else (0.0, ys[0])
    for lv in levels:
        w = lv["waiting_at_once"]
        lv["bytes_per_row"] = (lv["rss_bytes"] - intercept) / w if w else None
    groups = sorted({g for lv in levels for g in lv["rss_by_group"]})
    by_group = {g: fit(xs, [float(lv["rss_by_group"].get(g, 0)) for lv in levels])[0] if len(xs) > 1 else None
                for g in groups}
    return {"method": "peak RSS (driver growth + agents + sim + sink) against rows waiting at once; "
                      "least-squares slope", "hold_s": cfg.hold_s, "levels": levels,
            "bytes_per_row_slope": slope, "fixed_bytes": intercept, "bytes_per_row_by_group": by_group}


def main() -> None:
    ap = argparse.ArgumentParser(description="one memory level (run by bench.memory.run_memory)")
    ap.add_argument("--address", required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--hold-s", type=float, required=True)
    args = ap.parse_args()
    from matrixlang.runtime.control.cluster import connect

    connect(args.address)
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure_level(args.rows, args.hold_s, Path(tmp))))


if __name__ == "__main__":
    main()
