"""The openai backend against `mxc sim-server` versus the in-cluster simulator, at the same capacity.

1. Client CPU per call: this process drives the openai client (chat completions, growing histories)
   against a zero-latency `mxc sim-server` subprocess and divides its own CPU time by the calls.
2. Throughput: the same two-agent workflow over the same rows with `mxc run --backend sim` (the
   in-cluster sim service) and with its `openai` model pointed at `mxc sim-server` started with the
   model's `sim` capacity (replicas, max concurrency, ttft, per-token); rows/s, tokens/s, and the
   ratio openai / in-cluster. The outputs of the two runs are compared too (they must be equal).

    python bench/openai_vs_sim.py [--rows 2000] [--calls 3000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from matrixlang.runtime.backends.openai_client import OpenAIClient, OpenAIModel, close_shared_session
from matrixlang.runtime.backends.simserver import SimServerProcess
from matrixlang.runtime.control.run import RunOptions, run

from matrixlang.checker import check
from matrixlang.compiler import build_ir
from matrixlang.source import Source

WORKFLOW = """
workflow pingpong "two agents alternate for a fixed number of turns"
input { id: str  topic: str }
limits { max_steps = 12 }
model llm {
  backend = "openai"
  name = "sim"
  url = env("BENCH_LLM_URL", "http://127.0.0.1:8000/v1")
  max_tokens = 64
  tokens = TOKENS
  ttft = TTFT
  per_token = PER_TOKEN
}
agent a {
  model = llm
  system = "Discuss {{ row.topic }} with your partner."
  prompt = "{{ last.text if last else 'Begin.' }}"
  sim = "Point {{ turns }} on {{ row.topic }}: {{ ['yes', 'no', 'maybe'] | random }}"
}
agent b {
  model = llm
  system = "Reply to your partner about {{ row.topic }}."
}
flow {
  start -> a
  a -> b
  b -> end when turns >= STEPS
  b -> a
}
output { id = row.id  last = b.text  said = a.text }
"""


def compile_workflow(args, ttft: str, per_token: str) -> dict:
    src = (WORKFLOW.replace("TOKENS", args.tokens).replace("TTFT", ttft).replace("PER_TOKEN", per_token)
           .replace("STEPS", str(args.steps)))
    an = check(Source("<bench>", src))
    errors = [d for d in an.diags.sorted() if d.is_error]
    if errors:
        raise SystemExit(f"bench workflow does not check: {errors}")
    ir = build_ir(an)
    # the simulated capacity both paths get: the in-cluster sim service and the sim server's options
    ir["models"]["llm"]["sim"].update(replicas=args.replicas, max_concurrency=args.max_concurrency)
    return ir


# ---- 1. client CPU per call ------------------------------------------------------------------------

async def _drive(url: str, calls: int, history: int, concurrency: int) -> tuple[float, float]:
    client = OpenAIClient(OpenAIModel(model="llm", name="sim", urls=[url], params={"max_tokens": 32},
                                      timeout_s=60.0, retries=3))
    turn = "Consider the option and the value of the result; check each case given. " * 8   # ~600 chars
    msgs = [{"role": "system", "content": "You are a careful assistant."}]
    msgs += [{"role": "user" if i % 2 == 0 else "assistant", "content": turn} for i in range(history)]
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await client.chat(msgs, key=i)

    await asyncio.gather(*(one(i) for i in range(min(200, calls))))     # warm up connections
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    assert client.stats.failed == 0, client.snapshot()
    await close_shared_session()
    return cpu / calls * 1e6, calls / wall


def client_cpu(args) -> list[dict]:
    out = []
    with SimServerProcess(["--ttft", "0", "--per-token", "0", "--tokens", "32..32",
                           "--max-concurrency", "1024"]) as srv:
        for h in (1, 8, 32):
            us, rate = asyncio.run(_drive(srv.url, args.calls, h, 64))
            out.append({"history_messages": h, "cpu_us_per_call": round(us, 1), "calls_per_s": round(rate, 1)})
            print(f"client CPU: history {h:>2} messages  {us:7.1f} µs/call  ({rate:,.0f} calls/s, "
                  f"server in another process)", flush=True)
    return out


# ---- 2. throughput --------------------------------------------------------------------------------

def _rows(path: Path, n: int) -> None:
    topics = ["tides", "bridges", "proofs", "soil", "markets", "music", "glass", "orbits"]
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"r{i}", "topic": topics[i % len(topics)]}) + "\n")


def _outputs(path: Path) -> dict:
    rows = {}
    for line in path.read_text().splitlines():
        d = json.loads(line)
        d["_meta"].pop("timing")
        rows[d["_meta"]["id"]] = d
    return rows


def throughput(args, ttft: str, per_token: str) -> dict:
    ir = compile_workflow(args, ttft, per_token)
    sim = ir["models"]["llm"]["sim"]
    tmp = Path(tempfile.mkdtemp(prefix="mx-bench-"))
    inp = tmp / "rows.jsonl"
    _rows(inp, args.rows)
    common = {"input": str(inp), "max_in_flight": args.max_in_flight, "seed": 1, "progress": "off",
              "print_summary": False}
    res = {}
    s_sim = run(ir, RunOptions(output=str(tmp / "sim.jsonl"), backend="sim", **common))
    res["in_cluster"] = s_sim
    server_args = ["--replicas", str(sim["replicas"]), "--max-concurrency", str(sim["max_concurrency"]),
                   "--ttft", str(sim["ttft_s"]), "--per-token", str(sim["per_token_s"]), "--seed", "1"]
    with SimServerProcess(server_args) as srv:
        os.environ["BENCH_LLM_URL"] = srv.url
        s_http = run(ir, RunOptions(output=str(tmp / "http.jsonl"), **common))
        metrics = srv.metrics()
    res["openai"] = s_http
    same = _outputs(tmp / "sim.jsonl") == _outputs(tmp / "http.jsonl")
    table = {}
    for name, s in (("in-cluster sim", s_sim), ("openai -> sim-server", s_http)):
        table[name] = {"rows": s["rows"], "ok": s["by_status"].get("ok", 0), "elapsed_s": round(s["elapsed_s"], 2),
                       "rows_per_s": round(s["rows_per_s"], 1), "tokens_per_s": round(s["tokens_per_s"], 1),
                       "calls": sum(a["calls"] for a in s["agents"].values())}
    ratio = s_http["rows_per_s"] / s_sim["rows_per_s"] if s_sim["rows_per_s"] else float("nan")
    print(f"\nthroughput, {args.rows} rows x {args.steps} steps, capacity {sim['replicas']} x "
          f"{sim['max_concurrency']} sequences, ttft {sim['ttft_s']}s, per-token {sim['per_token_s']}s, "
          f"max in flight {args.max_in_flight}:")
    for name, t in table.items():
        print(f"  {name:<22} {t['rows_per_s']:>8.1f} rows/s  {t['tokens_per_s']:>10.1f} tokens/s  "
              f"({t['ok']}/{t['rows']} ok, {t['calls']} calls, {t['elapsed_s']} s)")
    print(f"  ratio openai / in-cluster: {ratio:.3f}   outputs identical: {same}")
    print(f"  server peak active {metrics.get('mx_sim_peak_active')}, peak queued {metrics.get('mx_sim_peak_queued')}")
    return {"table": table, "ratio": ratio, "identical_outputs": same,
            "server_peak_active": metrics.get("mx_sim_peak_active")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--steps", type=int, default=4, help="steps per row")
    p.add_argument("--calls", type=int, default=3000, help="calls per history size (client CPU)")
    p.add_argument("--tokens", default="20..60")
    p.add_argument("--latency", action="append", metavar="TTFT/PER_TOKEN",
                   help="simulated latencies, repeatable (default: 50ms/5ms, capacity-bound, and 0ms/0ms, "
                        "where the runtime and the HTTP path are the bottleneck)")
    p.add_argument("--replicas", type=int, default=2, help="simulated replicas (2)")
    p.add_argument("--max-concurrency", type=int, default=64, help="sequences per simulated replica (64)")
    p.add_argument("--max-in-flight", type=int, default=256)
    p.add_argument("--skip-cpu", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    out = {}
    if not args.skip_cpu:
        out["client_cpu"] = client_cpu(args)
    if not args.skip_throughput:
        out["throughput"] = [throughput(args, *lat.split("/")) for lat in args.latency or ["50ms/5ms", "0ms/0ms"]]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
