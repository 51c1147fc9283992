"""Goodput under a rate-limited server: `mxc run` with fixed concurrency against adaptive concurrency
(AIMD per endpoint, `--adaptive-concurrency on|off`), in one invocation.

The talk workload (bench/workloads/talk.mx, the HTTP-path benchmark's: two agents talk about a topic
for the row's number of rounds, here 1 to ``--max-rounds``), each mode against a fresh `mxc sim-server`
with the same seed (20 ms + 1 ms/token, 256 slots, no batching slowdown) behind a rate limit of
``--rps`` requests per second (a token bucket saving up ``--burst``; ``--tpm`` adds tokens per minute).
``--in-flight`` rows at once would send several times the limit. Both modes send the same successful
requests (checked: the same calls and completion tokens served, the same rounds per row).

Per mode: goodput (ok rows/s, completion tokens/s, and ok rows/s against the limit's ideal: every call
admitted at the limit's rate), 429s received, wasted calls (attempts that did no work: 429s and other
failures), rows failed, the latency of a call as the agent sees it (waiting and retries included,
p50/p95 over both agents), the CPU of the client's processes per successful call, and the load average.

    python bench/goodput.py [--rows 256] [--in-flight 256] [--rps 50] [--json bench/results/goodput.json]
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

from bench.http_path import TOPICS  # noqa: E402
from bench.monitor import RunMonitor, machine_info  # noqa: E402

SERVER = ["--max-concurrency", "256", "--ttft", "20ms", "--per-token", "1ms", "--slowdown", "0"]


def write_rows(path: Path, n: int, max_rounds: int, seed: int) -> list[dict]:
    import random

    rows = [{"id": f"g{i}", "topic": TOPICS[i % len(TOPICS)],
             "rounds": random.Random(f"{seed}:{i}").randint(1, max_rounds)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def server_args(args: argparse.Namespace) -> list[str]:
    limits = ["--rate-limit-rps", str(args.rps)] if args.rps else []
    limits += ["--rate-limit-tpm", str(args.tpm)] if args.tpm else []
    return [*SERVER, *limits, "--rate-limit-burst", args.burst, "--seed", str(args.seed)]


def run_mode(ir: dict, inp: Path, tmp: Path, args: argparse.Namespace, adaptive: bool) -> dict:
    from matrixlang.runtime.run import RunOptions, run
    from matrixlang.runtime.simserver import SimServerProcess

    out = tmp / f"{'aimd' if adaptive else 'fixed'}-{uuid.uuid4().hex[:6]}.jsonl"
    run_id = uuid.uuid4().hex[:8]
    with SimServerProcess(server_args(args)) as srv:
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
    return {"mode": "aimd" if adaptive else "fixed", "elapsed_s": round(elapsed, 2),
            "ok_rows": ok, "failed_rows": s["rows"] - ok, "ok_rows_per_s": round(ok / elapsed, 2),
            "tokens_per_s": round(s["tokens_per_s"], 1), "calls_ok": served, "tokens": int(m["mx_sim_completion_tokens_total"]),
            "http_429": refused, "wasted_calls": c["attempts"] - c["ok"], "attempts": c["attempts"],
            "p50_call_ms": round(1000 * max(a["p50_s"] or 0 for a in agents), 1),
            "p95_call_ms": round(1000 * max(a["p95_s"] or 0 for a in agents), 1),
            "cpu_ms_per_ok_call": round(1000 * sum(mon.cpu_by_group().values()) / max(served, 1), 3),
            "aimd": c["endpoints"], "client": {k: c[k] for k in ("throttled", "throttle_free", "retries", "failed")},
            "steps": steps, "loadavg_end": mon.summary(elapsed)["loadavg_end"]}


def print_table(results: list[dict], ideal: float) -> None:
    cols = ("mode", "ok rows/s", "/ideal", "tokens/s", "429s", "wasted calls", "rows failed", "p50 call ms",
            "p95 call ms", "CPU ms/ok call", "elapsed s")
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(x) for x in (r["mode"], r["ok_rows_per_s"], round(r["ok_rows_per_s"] / ideal, 3),
                                          r["tokens_per_s"], r["http_429"], r["wasted_calls"], r["failed_rows"],
                                          r["p50_call_ms"], r["p95_call_ms"], r["cpu_ms_per_ok_call"],
                                          r["elapsed_s"])), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--in-flight", type=int, default=256, help="mxc run --max-in-flight (256)")
    p.add_argument("--max-rounds", type=int, default=3, help="rounds per row drawn from 1..N (3)")
    p.add_argument("--rps", type=float, default=50.0, help="the server's requests per second (50)")
    p.add_argument("--tpm", type=float, default=0.0, help="the server's tokens per minute (0: no limit)")
    p.add_argument("--burst", default="1s", help="the server's --rate-limit-burst (1s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if not (args.rps or args.tpm):
        p.error("give --rps or --tpm (or both)")

    import ray

    from matrixlang.compiler import compile_file

    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             configure_logging=False)
    ir = compile_file(HERE / "workloads" / "talk.mx")
    tmp = Path(tempfile.mkdtemp(prefix="mx-goodput-"))
    inp = tmp / "rows.jsonl"
    write_rows(inp, args.rows, args.max_rounds, args.seed)
    print(f"server: mxc sim-server {' '.join(server_args(args))}; {args.rows} rows, {args.in_flight} in flight",
          flush=True)
    results = [run_mode(ir, inp, tmp, args, adaptive) for adaptive in (False, True)]
    fixed, aimd = results
    calls = fixed["calls_ok"]
    ideal = args.rows / (calls / args.rps) if args.rps else fixed["ok_rows_per_s"]
    same = {"calls": fixed["calls_ok"] == aimd["calls_ok"], "tokens": fixed["tokens"] == aimd["tokens"],
            "rounds": fixed["steps"] == aimd["steps"]}
    print_table(results, ideal)
    print(f"ideal (every call at {args.rps:g}/s): {ideal:.2f} rows/s; same work {all(same.values())}; "
          f"goodput aimd / fixed {aimd['ok_rows_per_s'] / fixed['ok_rows_per_s']:.3f}; "
          f"429s fixed / aimd {fixed['http_429']} / {aimd['http_429']}; load average {os.getloadavg()}")
    for r in results:
        r.pop("steps")
    out = {"bench": "goodput", "machine": machine_info(), "rows": args.rows, "in_flight": args.in_flight,
           "max_rounds": args.max_rounds, "server": " ".join(server_args(args)), "ideal_rows_per_s": round(ideal, 2),
           "same_work": same, "ratio_goodput_aimd_fixed": round(aimd["ok_rows_per_s"] / fixed["ok_rows_per_s"], 3),
           "results": results, "loadavg": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
