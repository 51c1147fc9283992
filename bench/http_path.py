"""The HTTP path at the ceiling of a plain client: `mxc run` (``backend = "openai"``) against a plain
asyncio + aiohttp loop (bench/plain_client.py) and the greedy ideal of the schedule, in one run.

The talk workload (bench/workloads/talk.mx): two agents talk about a topic for the row's number of
rounds (1 to 15), so conversations grow to 30 messages; replies are 20-200 tokens. Each client talks
to a fresh `mxc sim-server` (same seed; 2 replicas x 256 slots, 20 ms + 1 ms/token, no batching
slowdown, so a call's server time is exactly ttft + tokens x per-token and never queues). Both clients
send the same requests (the plain client sends the `mx_sim` hints the runtime sends), which the
benchmark checks: the same number of calls and completion tokens at the server, and the same rounds
per row.

Per client it reports rows/s and the ratio mxc / plain, the CPU per LLM call summed over every process
of the client (for mxc: the driver, every actor and every Ray process; the server is left out), and
the latency a call takes at the client beyond the server's own time. The ideal: every row's calls back
to back at the server's own speed, ``--in-flight`` rows at a time, admitted greedily in input order.
Each plain/mxc pair also records the CPU that other processes used meanwhile (``other_cpu_s``: other
jobs on a shared machine; ~0.3 s a pair when it is quiet).

    python bench/http_path.py [--rows 768] [--in-flight 128 --in-flight 1024] [--repeat 1]
                              [--offload-threshold N] [--json bench/results/http_path.json]
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:      # `python bench/http_path.py` from the checkout
    sys.path.insert(0, str(HERE.parent))

from bench.monitor import OtherCPU, RunMonitor, machine_info  # noqa: E402
from bench.plain_client import hint  # noqa: E402

TTFT_S, PER_TOKEN_S = 0.020, 0.001
SERVER = ["--replicas", "2", "--max-concurrency", "256", "--ttft", "20ms", "--per-token", "1ms",
          "--slowdown", "0"]
TOPICS = ["tides", "bridges", "proofs", "soil", "markets", "music", "glass", "orbits", "bees", "clocks"]


def write_rows(path: Path, n: int, seed: int) -> list[dict]:
    rows = [{"id": f"t{i}", "topic": TOPICS[i % len(TOPICS)], "rounds": random.Random(f"{seed}:{i}").randint(1, 15)}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def ideal(rows: list[dict], seed: int, in_flight: int) -> dict:
    """Rows/s of the greedy schedule at the server's own speed; calls and tokens of the workload."""
    free = [0.0] * min(in_flight, len(rows))
    calls = tokens = 0
    end = 0.0
    for r in rows:
        t = heapq.heappop(free)
        for step in range(2 * r["rounds"]):
            n = hint(seed, r["id"], step)["tokens"]
            t += TTFT_S + n * PER_TOKEN_S
            calls += 1
            tokens += n
        end = max(end, t)
        heapq.heappush(free, t)
    return {"rows_per_s": len(rows) / end, "makespan_s": end, "calls": calls, "tokens": tokens,
            "server_s_per_call": (calls * TTFT_S + tokens * PER_TOKEN_S) / calls}


def server_counts(srv) -> dict:
    m = srv.metrics()
    return {"calls": int(m.get('mx_sim_requests_total{route="/v1/chat/completions",code="200"}', 0)),
            "tokens": int(m.get("mx_sim_completion_tokens_total", 0)),
            "busy_s": m.get("mx_sim_busy_seconds_total", 0.0)}


def run_plain(inp: Path, in_flight: int, seed: int) -> dict:
    from matrixlang.runtime.backends.simserver import SimServerProcess

    with SimServerProcess([*SERVER, "--seed", str(seed)]) as srv:
        proc = subprocess.run([sys.executable, str(HERE / "plain_client.py"), srv.url, str(inp), str(in_flight),
                               str(seed)], capture_output=True, text=True, check=True)
        counts = server_counts(srv)
    out = json.loads(proc.stdout)
    lat = [t for t, _ in out["latencies"]]
    return {"rows_per_s": out["rows"] / out["elapsed_s"], "elapsed_s": out["elapsed_s"], "cpu_s": out["cpu_s"],
            "calls": out["calls"], "steps": out["steps"], "latency_mean_s": statistics.fmean(lat),
            "latency_p50_s": statistics.median(lat), "server": counts}


def run_mxc(ir: dict, inp: Path, tmp: Path, in_flight: int, seed: int, offload: int | None,
            adaptive: bool = True) -> dict:
    from matrixlang.runtime.backends.simserver import SimServerProcess
    from matrixlang.runtime.control.run import RunOptions, run

    out = tmp / f"mxc-{uuid.uuid4().hex[:6]}.jsonl"
    run_id = uuid.uuid4().hex[:8]
    extra = {} if offload is None else {"offload_threshold": offload}
    with SimServerProcess([*SERVER, "--seed", str(seed)]) as srv:
        os.environ["BENCH_LLM_URL"] = srv.url
        with RunMonitor(run_id, interval_s=0.25) as mon:
            s = run(ir, RunOptions(input=str(inp), output=str(out), max_in_flight=in_flight, seed=seed,
                                   progress="off", print_summary=False, run_id=run_id,
                                   adaptive_concurrency=adaptive, **extra))
        counts = server_counts(srv)
        mon.procs.pop(srv.proc.pid, None)            # the server's CPU is not the client's
    cpu = mon.cpu_by_group()
    steps = {}
    for line in out.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        steps[d["_meta"]["id"]] = d["_meta"]["steps"] if d["_meta"]["status"] == "ok" else -1
    calls = sum(a["calls"] for a in s["agents"].values())
    lat_mean = (sum(a["mean_s"] * a["calls"] for a in s["agents"].values()) / calls) if calls else 0.0
    return {"rows_per_s": s["rows_per_s"], "elapsed_s": s["elapsed_s"], "cpu_s": sum(cpu.values()),
            "cpu_by_group": {k: round(v, 2) for k, v in cpu.items()}, "calls": calls, "steps": steps,
            "latency_mean_s": lat_mean, "latency_p50_s": max(a["p50_s"] or 0 for a in s["agents"].values()),
            "server": counts, "by_status": s["by_status"], "monitor": mon.summary(s["elapsed_s"]),
            "http": sorted({h for c in (s.get("clients") or {}).values() for h in c.get("http", [])}),
            "aimd": {u: {k: e[k] for k in ("decreases", "latency_decreases", "pauses", "limit_min")}
                     for c in (s.get("clients") or {}).values() for u, e in c["endpoints"].items()}}


def compare(rows: list[dict], in_flight: int, seed: int, plain: dict, mxc: dict) -> dict:
    best = ideal(rows, seed, in_flight)
    same = {"calls": plain["server"]["calls"] == mxc["server"]["calls"] == best["calls"],
            "tokens": plain["server"]["tokens"] == mxc["server"]["tokens"] == best["tokens"],
            "rounds": plain["steps"] == mxc["steps"]}
    per_call = best["server_s_per_call"]
    fig = {}
    for name, r in (("plain", plain), ("mxc", mxc)):
        fig[name] = {"rows_per_s": round(r["rows_per_s"], 2), "elapsed_s": round(r["elapsed_s"], 2),
                     "cpu_ms_per_call": round(1000 * r["cpu_s"] / max(r["calls"], 1), 3),
                     "added_latency_ms": round(1000 * (r["latency_mean_s"] - per_call), 1),
                     "latency_p50_ms": round(1000 * r["latency_p50_s"], 1)}
    fig["mxc"]["cpu_by_group_s"] = mxc["cpu_by_group"]
    fig["mxc"]["http"] = mxc["http"]   # its HTTP client: "lean" (http1) or "aiohttp" (MX_HTTP_CLIENT)
    fig["mxc"]["aimd"] = mxc["aimd"]   # per endpoint: cuts of the adaptive limit (none expected here)
    fig["ideal"] = {"rows_per_s": round(best["rows_per_s"], 2), "makespan_s": round(best["makespan_s"], 2)}
    return {"in_flight": in_flight, "rows": len(rows), "same_work": same, "calls": best["calls"],
            "ratio_mxc_plain": round(mxc["rows_per_s"] / plain["rows_per_s"], 3),
            "ratio_mxc_ideal": round(mxc["rows_per_s"] / best["rows_per_s"], 3),
            "ratio_plain_ideal": round(plain["rows_per_s"] / best["rows_per_s"], 3), **fig,
            "loadavg_end": mxc["monitor"]["loadavg_end"]}


def print_row(c: dict) -> None:
    p, m, i = c["plain"], c["mxc"], c["ideal"]
    print(f"in flight {c['in_flight']:>5}: plain {p['rows_per_s']:6.1f} rows/s   mxc {m['rows_per_s']:6.1f} rows/s   "
          f"ideal {i['rows_per_s']:6.1f}   mxc/plain {c['ratio_mxc_plain']:.3f}   "
          f"CPU/call plain {p['cpu_ms_per_call']:.2f} ms, mxc {m['cpu_ms_per_call']:.2f} ms   "
          f"added latency plain {p['added_latency_ms']:.1f} ms, mxc {m['added_latency_ms']:.1f} ms   "
          f"mxc http {','.join(m.get('http', []))}   same work {all(c['same_work'].values())}   load {c['loadavg_end']}   "
          f"other processes' CPU {c.get('other_cpu_s', 0):.2f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=768)
    p.add_argument("--in-flight", type=int, action="append", help="rows in flight (repeatable; 128 and 1024)")
    p.add_argument("--repeat", type=int, default=1, help="plain and mxc back to back, this many times")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offload-threshold", type=int, help="mxc run --offload-threshold (default: mxc's own)")
    p.add_argument("--adaptive-concurrency", choices=["on", "off"], default="on", help="mxc run's (default on)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    import ray

    from matrixlang.compiler import compile_file

    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             configure_logging=False)
    ir = compile_file(HERE / "workloads" / "talk.mx")
    tmp = Path(tempfile.mkdtemp(prefix="mx-http-"))
    inp = tmp / "rows.jsonl"
    rows = write_rows(inp, args.rows, args.seed)
    results = []
    for in_flight in args.in_flight or [128, 1024]:
        for rep in range(args.repeat):
            with OtherCPU() as other:
                plain = run_plain(inp, in_flight, args.seed)
                mxc = run_mxc(ir, inp, tmp, in_flight, args.seed, args.offload_threshold,
                              args.adaptive_concurrency == "on")
            c = compare(rows, in_flight, args.seed, plain, mxc)
            c["repeat"] = rep
            c["other_cpu_s"] = round(other.seconds, 2)   # other jobs on the machine meanwhile
            results.append(c)
            print_row(c)
    out = {"bench": "http_path", "machine": machine_info(), "rows": args.rows, "seed": args.seed,
           "server": " ".join(SERVER), "offload_threshold": args.offload_threshold, "results": results,
           "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
