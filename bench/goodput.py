"""Goodput under a rate-limited server: `mxc run` with fixed concurrency against adaptive concurrency
(AIMD per endpoint, `--adaptive-concurrency on|off`), in one invocation.

The talk workload (bench/workloads/talk.mx, the HTTP-path benchmark's: two agents talk about a topic
for the row's number of rounds, here 1 to ``--max-rounds``), each mode against a fresh `mxc sim-server`
with the same seed (20 ms + 1 ms/token, 256 slots, no batching slowdown) behind one of two limits:

- **rps**: ``--rps`` requests per second (a token bucket saving up ``--burst``; ``--tpm`` adds tokens
  per minute), 429 with the exact ``Retry-After``; the ideal: every call admitted at the limit's rate
  (after the burst);
- **concurrent**: ``--max-concurrent`` requests served at once, 429 without ``Retry-After`` above
  (a gateway's concurrency limit); the ideal: the server's own time of every call over its slots.

``--in-flight`` rows at once would send several times either limit. Both modes send the same
successful requests (checked: the same calls and completion tokens served, the same rounds per row).

Per mode: goodput (ok rows/s against the ideal, completion tokens/s), 429s received, wasted calls
(attempts that did no work: 429s and other failures), rows failed, the latency of a call as the agent
sees it (waiting and retries included, p50/p95, the larger of the two agents'), the CPU of the
client's processes per successful call, and the load average.

    python bench/goodput.py [--rows 256] [--in-flight 256] [--rps 50] [--max-concurrent 16]
                            [--json bench/results/goodput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:      # `python bench/goodput.py` from the checkout
    sys.path.insert(0, str(HERE.parent))

from bench.http_path import PER_TOKEN_S, TOPICS, TTFT_S  # noqa: E402
from bench.monitor import RunMonitor, machine_info  # noqa: E402

SERVER = ["--max-concurrency", "256", "--ttft", "20ms", "--per-token", "1ms", "--slowdown", "0"]


def write_rows(path: Path, n: int, max_rounds: int, seed: int) -> list[dict]:
    import random

    rows = [{"id": f"g{i}", "topic": TOPICS[i % len(TOPICS)],
             "rounds": random.Random(f"{seed}:{i}").randint(1, max_rounds)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def server_args(args: argparse.Namespace, scenario: str) -> list[str]:
    if scenario == "concurrent":
        limits = ["--max-concurrent", str(args.max_concurrent)]
    else:
        limits = ["--rate-limit-rps", f"{args.rps:g}"] if args.rps else []
        limits += ["--rate-limit-tpm", f"{args.tpm:g}"] if args.tpm else []
        limits += ["--rate-limit-burst", args.burst]
    return [*SERVER, *limits, "--seed", str(args.seed)]


def ideal_rows_per_s(args: argparse.Namespace, scenario: str, calls: int, tokens: int) -> float:
    """The limit's best: calls at the rate after the burst, or the server's time over its slots."""
    from matrixlang.commands.sim_server import duration

    if scenario == "concurrent":
        return args.rows / ((calls * TTFT_S + tokens * PER_TOKEN_S) / args.max_concurrent)
    return args.rows / (max(1.0, calls - args.rps * duration(args.burst)) / args.rps)


def run_mode(ir: dict, inp: Path, tmp: Path, args: argparse.Namespace, scenario: str, adaptive: bool) -> dict:
    from matrixlang.runtime.backends.simserver import SimServerProcess
    from matrixlang.runtime.control.run import RunOptions, run

    out = tmp / f"{'aimd' if adaptive else 'fixed'}-{uuid.uuid4().hex[:6]}.jsonl"
    run_id = uuid.uuid4().hex[:8]
    with SimServerProcess(server_args(args, scenario)) as srv:
        os.environ["BENCH_LLM_URL"] = srv.url
        with RunMonitor(run_id, interval_s=0.25) as mon:
            s = run(ir, RunOptions(input=str(inp), output=str(out), max_in_flight=args.in_flight, seed=args.seed,
                                   progress="off", print_summary=False, run_id=run_id,
                                   adaptive_concurrency=adaptive))
        m = srv.metrics()
        mon.procs.pop(srv.proc.pid, None)            # the server's CPU is not the client's
    steps, ok = {}, 0
    for line in out.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)["_meta"]
        ok += d["status"] == "ok"
        steps[d["id"]] = d["steps"] if d["status"] == "ok" else -1
    chat = '/v1/chat/completions'
    served = int(m.get(f'mx_sim_requests_total{{route="{chat}",code="200"}}', 0))
    refused = int(m.get(f'mx_sim_requests_total{{route="{chat}",code="429"}}', 0))
    c = s["clients"]["llm"]
    elapsed = s["elapsed_s"]
    agents = s["agents"].values()
    return {"scenario": scenario, "mode": "aimd" if adaptive else "fixed", "elapsed_s": round(elapsed, 2),
            "ok_rows": ok, "failed_rows": s["rows"] - ok, "ok_rows_per_s": round(ok / elapsed, 2),
            "tokens_per_s": round(s["tokens_per_s"], 1), "calls_ok": served, "tokens": int(m["mx_sim_completion_tokens_total"]),
            "http_429": refused, "wasted_calls": c["attempts"] - c["ok"], "attempts": c["attempts"],
            "p50_call_ms": round(1000 * max(a["p50_s"] or 0 for a in agents), 1),
            "p95_call_ms": round(1000 * max(a["p95_s"] or 0 for a in agents), 1),
            "cpu_ms_per_ok_call": round(1000 * sum(mon.cpu_by_group().values()) / max(served, 1), 3),
            "aimd": c["endpoints"], "client": {k: c[k] for k in ("throttled", "throttle_free", "retries", "failed")},
            "steps": steps, "loadavg_end": mon.summary(elapsed)["loadavg_end"]}


def print_table(results: list[dict]) -> None:
    cols = ("limit", "mode", "ok rows/s", "/ideal", "tokens/s", "429s", "wasted calls", "rows failed", "p50 call ms",
            "p95 call ms", "CPU ms/ok call", "elapsed s")
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(x) for x in (r["scenario"], r["mode"], r["ok_rows_per_s"], r["of_ideal"],
                                          r["tokens_per_s"], r["http_429"], r["wasted_calls"], r["failed_rows"],
                                          r["p50_call_ms"], r["p95_call_ms"], r["cpu_ms_per_ok_call"],
                                          r["elapsed_s"])), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--in-flight", type=int, default=256, help="mxc run --max-in-flight (256)")
    p.add_argument("--max-rounds", type=int, default=3, help="rounds per row drawn from 1..N (3)")
    p.add_argument("--rps", type=float, default=50.0, help="the rps scenario's requests per second (50; 0: skip it)")
    p.add_argument("--tpm", type=float, default=0.0, help="and tokens per minute (0: no limit)")
    p.add_argument("--burst", default="1s", help="the rps scenario's --rate-limit-burst (1s)")
    p.add_argument("--max-concurrent", type=int, default=16,
                   help="the concurrent scenario's requests served at once (16; 0: skip it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    scenarios = [name for name, on in (("rps", args.rps or args.tpm), ("concurrent", args.max_concurrent)) if on]
    if not scenarios:
        p.error("give --rps, --tpm or --max-concurrent")
    if args.tpm and not args.rps:
        p.error("--tpm goes with --rps (the rps scenario's ideal is the request rate's)")

    import ray

    from matrixlang.compiler import compile_file

    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             configure_logging=False)
    ir = compile_file(HERE / "workloads" / "talk.mx")
    tmp = Path(tempfile.mkdtemp(prefix="mx-goodput-"))
    inp = tmp / "rows.jsonl"
    write_rows(inp, args.rows, args.max_rounds, args.seed)
    results, compared = [], {}
    for scenario in scenarios:
        print(f"{scenario}: mxc sim-server {' '.join(server_args(args, scenario))}; {args.rows} rows, "
              f"{args.in_flight} in flight", flush=True)
        fixed, aimd = (run_mode(ir, inp, tmp, args, scenario, adaptive) for adaptive in (False, True))
        ideal = ideal_rows_per_s(args, scenario, fixed["calls_ok"], fixed["tokens"])
        for r in (fixed, aimd):
            r["of_ideal"] = round(r["ok_rows_per_s"] / ideal, 3)
        same = {"calls": fixed["calls_ok"] == aimd["calls_ok"], "tokens": fixed["tokens"] == aimd["tokens"],
                "rounds": fixed["steps"] == aimd["steps"]}
        compared[scenario] = {"ideal_rows_per_s": round(ideal, 2), "same_work": same,
                              "goodput_aimd_over_fixed": round(aimd["ok_rows_per_s"] / fixed["ok_rows_per_s"], 3),
                              "http_429_fixed_over_aimd": round(fixed["http_429"] / max(aimd["http_429"], 1), 1)}
        for r in (fixed, aimd):
            r.pop("steps")
        results += [fixed, aimd]
    print_table(results)
    for scenario, c in compared.items():
        print(f"{scenario}: ideal {c['ideal_rows_per_s']} rows/s; same work {all(c['same_work'].values())}; "
              f"goodput aimd / fixed {c['goodput_aimd_over_fixed']}; 429s fixed / aimd {c['http_429_fixed_over_aimd']}")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    out = {"bench": "goodput", "machine": machine_info(), "rows": args.rows, "in_flight": args.in_flight,
           "max_rounds": args.max_rounds, "servers": {s: " ".join(server_args(args, s)) for s in scenarios},
           "compared": compared, "results": results, "loadavg": load, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
