"""Issue 10: admission throughput with 1, 2 and 4 drivers (``mxc run --drivers N``) on a multi-node
``ray.cluster_utils.Cluster`` (4 raylets on this machine), at zero model latency.

The workflow is bench/workloads/admit.mx: one agent, one step, a sim model that answers at once, so a
run is bound by the runtime's own per-row work. One cluster serves every run; the driver counts run
back to back in each repeat (so a repeat's ratios compare runs under the same machine load). While a
run goes, a thread samples every 0.1 s: the rows in the output (its newlines), the CPU time of this
process (the one driver with ``--drivers 1``; with N ≥ 2 the process that starts the shards and
merges their progress), of each driver shard actor and of the run's other actors (/proc, by the pid
each actor's ``ping`` answers). Figures are over the steady window, from 10% to 90% of the rows:

* ``rows_per_s``: rows written per second (every row is admitted once, so this is admission's rate);
* ``driver_cpu_ms_per_row``: CPU of the driver side (this process + the shards) per row, split;
* ``cpu_ms_per_row``: the same for the agents, the sim services and the sink (where the rest goes).

A shard reads every row of the input and parses those it does not own to find their owner, so the
driver side's CPU per row grows with N: a least-squares line ``a + b·N`` over the measured driver
counts gives the scale model (bench/scale_model.py ``driver_ceiling``) its ceiling ``N / (a + b·N)``
rows/s with N drivers, each on a core of its own.

    python -m bench.drivers [--rows 40000] [--drivers 1,2,4] [--repeats 2] [--json bench/results/drivers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray

from .monitor import Sampling, machine_info, machine_ticks, proc_cpu_s

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "bench" / "workloads" / "admit.mx"
WINDOW = (0.1, 0.9)


class Sampler(Sampling):
    """Samples rows written and CPU of one run's processes every ``interval_s`` (a thread)."""

    def __init__(self, run_id: str, out: Path, drivers: int, interval_s: float = 0.1):
        super().__init__("drivers-sampler")
        self.prefix, self.out, self.drivers, self.interval_s = f"mx-{run_id}:", out, drivers, interval_s
        self.pids: dict[str, int] = {}                 # actor name -> pid
        self.samples: list[dict] = []
        self._rows, self._offset = 0, 0

    def _count_rows(self) -> int:
        try:
            with open(self.out, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return self._rows
        self._offset += len(chunk)
        self._rows += chunk.count(b"\n")
        return self._rows

    def _discover(self) -> bool:
        """Find the run's actors and their pids once they are all up (the shards start last)."""
        names = [n for n in ray.util.list_named_actors() if n.startswith(self.prefix)]
        shards = [n for n in names if n[len(self.prefix):].startswith("driver:")]
        if self.drivers > 1 and len(shards) < self.drivers:
            return False
        for n in names:
            self.pids[n] = ray.get(ray.get_actor(n).ping.remote(), timeout=10)[1]
        return bool(names)

    def _loop(self) -> None:
        found = False
        while not self._stop.is_set():
            rows = self._count_rows()
            if not found and (self.drivers > 1 or rows > 0):
                try:
                    found = self._discover()
                except Exception:  # noqa: BLE001 - an actor still starting: try at the next tick
                    found = False
            if found:     # this thread's own CPU (discovery, sampling) is not the driver's
                groups: dict[str, float] = {"main": time.process_time() - time.thread_time()}
                for name, pid in self.pids.items():
                    cpu = proc_cpu_s(pid)
                    if cpu is not None:
                        g = name[len(self.prefix):].split(":")[0]
                        groups[g] = groups.get(g, 0.0) + cpu
                busy, total = machine_ticks()
                self.samples.append({"t": time.monotonic(), "rows": rows, "cpu": groups,
                                     "machine": (busy, total)})
            self._stop.wait(self.interval_s)

    def window(self, total_rows: int) -> dict:
        """Rates and CPU per row between the samples at 10% and 90% of ``total_rows``."""
        lo, hi = (f * total_rows for f in WINDOW)
        first = next((s for s in self.samples if s["rows"] >= lo), None)
        last = next((s for s in reversed(self.samples) if s["rows"] <= hi), None)
        if first is None or last is None or last["rows"] <= first["rows"]:
            return {}
        rows, dt = last["rows"] - first["rows"], last["t"] - first["t"]
        per_row = {g: 1e3 * (last["cpu"].get(g, 0.0) - v) / rows for g, v in first["cpu"].items()}
        busy = (last["machine"][0] - first["machine"][0]) / max(last["machine"][1] - first["machine"][1], 1)
        driver = {"main": per_row.get("main", 0.0), "shards": per_row.get("driver", 0.0)}
        return {"rows": rows, "seconds": dt, "rows_per_s": rows / dt,
                "driver_cpu_ms_per_row": {**driver, "total": driver["main"] + driver["shards"]},
                "cpu_ms_per_row": {g: v for g, v in per_row.items() if g not in ("main", "driver")},
                "machine_busy": busy}


def one_run(ir: dict, inp: Path, tmp: Path, drivers: int, rows: int, args: argparse.Namespace, tag: str) -> dict:
    from matrixlang.runtime.control.run import RunOptions, run

    out = tmp / f"out-{tag}.jsonl"
    with Sampler(tag, out, drivers) as sampler:
        s = run(ir, RunOptions(input=str(inp), output=str(out), backend="sim", overwrite=True, progress="off",
                               print_summary=False, drivers=drivers, max_in_flight=args.in_flight,
                               replicas={"echo": args.replicas}, run_id=tag))
    w = sampler.window(rows)
    nodes = s.get("nodes", {})
    out.unlink(missing_ok=True)
    return {"drivers": drivers, "rows": s["rows"], "lost": s["lost"], "whole_run_rows_per_s": s["rows_per_s"],
            "agents_transport": s["transport"],
            "agent_nodes": len({v for k, v in nodes.items() if ":agent:" in k}), **w}


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``a + b·n`` through ``(n, y)`` points."""
    ns, ys = [p[0] for p in points], [p[1] for p in points]
    mn, my = statistics.fmean(ns), statistics.fmean(ys)
    var = sum((n - mn) ** 2 for n in ns)
    b = sum((n - mn) * (y - my) for n, y in zip(ns, ys, strict=True)) / var if var else 0.0
    return my - b * mn, b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=40000)
    p.add_argument("--drivers", default="1,2,4", help="driver counts, comma-separated")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--nodes", type=int, default=4, help="raylets of the cluster_utils cluster (1 CPU each)")
    p.add_argument("--replicas", type=int, default=4, help="replicas of the agent (spread over the nodes)")
    p.add_argument("--in-flight", type=int, default=512)
    p.add_argument("--json", type=Path, help="write the results here (bench/results/drivers.json)")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.drivers.split(",")]

    from ray.cluster_utils import Cluster

    from matrixlang.compiler import compile_file

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ir = compile_file(WORKFLOW)
    t_start = time.time()
    info = machine_info()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
    runs: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mx-drivers-") as d:
            tmp = Path(d)
            inp = tmp / "in.jsonl"
            inp.write_text("".join(json.dumps({"id": f"r{i}"}) + "\n" for i in range(args.rows)))
            for rep in range(args.repeats):
                for n in counts:
                    r = one_run(ir, inp, tmp, n, args.rows, args, f"drv{n}x{rep}") | {"repeat": rep}
                    runs.append(r)
                    dc = r.get("driver_cpu_ms_per_row", {})
                    print(f"drivers {n} rep {rep}: {r.get('rows_per_s', 0):7.0f} rows/s steady "
                          f"({r['whole_run_rows_per_s']:.0f} whole run), driver CPU "
                          f"{dc.get('total', 0):.3f} ms/row (main {dc.get('main', 0):.3f}, shards "
                          f"{dc.get('shards', 0):.3f}), others " + ", ".join(
                              f"{g} {v:.3f}" for g, v in sorted(r.get("cpu_ms_per_row", {}).items()))
                          + f", machine busy {r.get('machine_busy', 0):.2f}", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()

    def med(n: int, key) -> float | None:
        vals = [key(r) for r in runs if r["drivers"] == n and r.get("rows_per_s")]
        return statistics.median(vals) if vals else None

    per = {n: {"rows_per_s": med(n, lambda r: r["rows_per_s"]),
               "driver_cpu_ms_per_row": med(n, lambda r: r["driver_cpu_ms_per_row"]["total"]),
               "driver_cpu_ms_per_row_main": med(n, lambda r: r["driver_cpu_ms_per_row"]["main"]),
               "driver_cpu_ms_per_row_shards": med(n, lambda r: r["driver_cpu_ms_per_row"]["shards"]),
               "other_cpu_ms_per_row": med(n, lambda r: sum(r["cpu_ms_per_row"].values())),
               "machine_busy": med(n, lambda r: r["machine_busy"])} for n in counts}
    ratios = [r4["rows_per_s"] / r1["rows_per_s"] for rep in range(args.repeats)
              for r1 in runs if r1["drivers"] == counts[0] and r1["repeat"] == rep and r1.get("rows_per_s")
              for r4 in runs if r4["drivers"] == counts[-1] and r4["repeat"] == rep and r4.get("rows_per_s")]
    a, b = fit([(n, v["driver_cpu_ms_per_row"]) for n, v in per.items() if v["driver_cpu_ms_per_row"]])
    cost = {n: v["driver_cpu_ms_per_row"] for n, v in per.items() if v["driver_cpu_ms_per_row"]}
    model = {"driver_row_ms": a, "driver_row_ms_per_shard": b,
             "ceiling_rows_per_s": {str(n): 1e3 * n / (cost[n] if n in cost else a + b * n) for n in (1, 2, 4, 8, 16)},
             "ceiling_limit_rows_per_s": 1e3 / b if b > 0 else None,
             "form": "driver CPU per row = a + b·N over the N shards (= each shard's CPU per row it admits); "
                     "ceiling N / cost(N) rows/s with a core per shard (measured cost where measured, else the line)"}
    result = {"bench": "drivers", "machine": info, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
              "loadavg_end": [round(x, 2) for x in os.getloadavg()], "wall_s": round(time.time() - t_start, 1),
              "command": "python -m bench.drivers " + " ".join(argv if argv is not None else sys.argv[1:]),
              "config": {"rows": args.rows, "drivers": counts, "repeats": args.repeats, "nodes": args.nodes,
                         "replicas": args.replicas, "in_flight": args.in_flight, "workflow": "bench/workloads/admit.mx",
                         "window": list(WINDOW)},
              "per_drivers": {str(n): v for n, v in per.items()},
              f"ratio_{counts[-1]}_over_{counts[0]}": {"per_repeat": ratios,
                                                       "median": statistics.median(ratios) if ratios else None},
              "model": model, "runs": runs}
    print("rows/s: " + ", ".join(f"{n} drivers {v['rows_per_s'] or 0:,.0f}" for n, v in per.items())
          + f"; {counts[-1]}/{counts[0]} = {result[f'ratio_{counts[-1]}_over_{counts[0]}']['median'] or 0:.2f}x; "
          f"driver CPU/row = {a:.3f} + {b:.3f}·N ms; load {info['loadavg']} -> {result['loadavg_end']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
