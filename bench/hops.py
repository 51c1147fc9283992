"""Benchmarks of the peer-to-peer runtime's transport and scheduling (prints figures, asserts nothing).

    python bench/hops.py [--what hops,schedule,offload,memory] [--rows N] [--hops H] [--in-flight K] [--repeats R]

hops      zero-latency workflow hops/s (every step is a real agent step: render, sim service round
          trip, extracts, guards, routing) with and without coalescing, against a raw per-message Ray
          actor relay of messages of the same size measured in the same run; the transport alone
          (coalesced relay); the latency a hop takes for a lone message and under load (p50/p99).
schedule  row-level vs batch scheduling (and central orchestration) on a workflow whose rows vary
          widely in length (1 to 40 steps of 10-40 ms simulated calls): elapsed and the ratio.
offload   pickled bytes per hop of long-history rows with and without offloading to the object store.
memory    resident memory of the run's processes with 10,000 rows in flight (each waiting on one 20 s
          simulated call) against 100 in flight: bytes per in-flight row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:      # `python bench/hops.py` from the checkout
    sys.path.insert(0, str(HERE.parent))

import ray  # noqa: E402
from matrixlang.runtime.actors.routing import message_bytes  # noqa: E402
from matrixlang.runtime.backends.simmodel import sim_reply  # noqa: E402
from matrixlang.runtime.control.cluster import connect  # noqa: E402
from matrixlang.runtime.control.run import RunOptions, run  # noqa: E402
from matrixlang.runtime.semantics.engine import Engine, Reply  # noqa: E402
from matrixlang.runtime.transport.outbox import Outbox, unpack  # noqa: E402

from bench.programs import long_replies, pingpong, varied, waiting  # noqa: E402

# ---- raw and coalesced relays --------------------------------------------------------------------


@ray.remote(num_cpus=0)
class RawRelay:
    """A per-message relay: every hop is one Ray actor call."""

    def __init__(self) -> None:
        self.peer, self.done, self.lat = None, 0, []

    def connect(self, peer) -> None:
        self.peer = peer

    async def hop(self, msg: dict) -> None:
        self.lat.append(time.time() - msg["t"])
        msg["left"] -= 1
        if msg["left"] > 0:
            msg["t"] = time.time()
            self.peer.hop.remote(msg)
        else:
            self.done += 1

    def progress(self) -> tuple[int, list]:
        return self.done, self.lat[-20000:]


@ray.remote(num_cpus=0)
class CoalescedRelay:
    """The same relay over the runtime's coalescing outbox (transport only, no workflow work)."""

    def __init__(self, coalesce: bool) -> None:
        self.peer, self.done, self.lat, self.box, self.coalesce = None, 0, [], None, coalesce

    def connect(self, peer) -> None:
        self.peer = peer

    async def deliver(self, batch: list) -> int:
        if self.box is None:
            self.box = Outbox(coalesce=self.coalesce)
        now = time.time()
        for msg in unpack(batch):
            self.lat.append(now - msg["t"])
            msg["left"] -= 1
            if msg["left"] > 0:
                msg["t"] = time.time()
                self.box.send("peer", self.peer, msg)
            else:
                self.done += 1
        return 0

    def progress(self) -> tuple[int, list]:
        return self.done, self.lat[-20000:]


def relay(kind: str, n: int, hops: int, payload: int) -> dict:
    """hops/s and per-hop latency of n messages relayed `hops` times between two actors."""
    cls = RawRelay if kind == "raw" else CoalescedRelay
    args = () if kind == "raw" else (kind == "coalesced",)
    a, b = (cls.options(max_concurrency=10000).remote(*args) for _ in range(2))
    ray.get([a.connect.remote(b), b.connect.remote(a)])
    t0 = time.time()
    for i in range(n):
        msg = {"left": hops, "id": i, "pad": "x" * payload, "t": time.time()}
        if kind == "raw":
            a.hop.remote(msg)
        else:
            a.deliver.remote([msg])
    lat: list[float] = []
    while True:
        (da, la), (db, lb) = ray.get([a.progress.remote(), b.progress.remote()])
        if da + db >= n:
            lat = la + lb
            break
        time.sleep(0.005)
    elapsed = time.time() - t0
    ray.kill(a)
    ray.kill(b)
    return {"hops_per_s": n * hops / elapsed, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q * 100) - 1] if len(xs) > 1 else (xs[0] if xs else 0.0)


# ---- workflow runs -------------------------------------------------------------------------------


def run_rows(ir: dict, rows: list[dict], tmp: str, **kw) -> dict:
    inp, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run(ir, RunOptions(input=str(inp), output=str(out), backend="sim", overwrite=True, progress="off",
                              print_summary=False, **kw))


def mean_message_bytes(ir: dict, n_rows: int = 4) -> int:
    """Mean pickled size of the messages the workflow sends between agents."""
    eng = Engine(ir, backend="sim")
    sizes = []
    for i in range(n_rows):
        msg = eng.new_message(json.dumps({"id": i}), i, 0.0)
        while not msg.finished:
            call = eng.prepare_call(msg, [])
            eng.apply_reply(msg, Reply(sim_reply(call.sim_text, call.sim_tokens, call.seed_key), 1, 1), [], 0.0)
            if not msg.finished:
                sizes.append(message_bytes(msg))
    return int(sum(sizes) / len(sizes))


def bench_hops(rows: int, hops: int, in_flight: int, tmp: str, repeats: int = 3) -> None:
    ir = pingpong(hops)
    size = mean_message_bytes(ir)
    print(f"== hops: {rows} rows x {hops} hops, {in_flight} in flight, messages of ~{size} B pickled; "
          f"workflow and raw relay interleaved {repeats}x (medians)")
    data = [{"id": i} for i in range(rows)]
    payload = max(0, size - 60)
    runs: dict[str, list[dict]] = {"workflow": [], "raw": []}
    for _ in range(repeats):       # interleaved, so that background load hits both alike
        runs["workflow"].append(run_rows(ir, data, tmp, max_in_flight=in_flight))
        runs["raw"].append(relay("raw", in_flight, hops, payload))
    wf = [s["hops_per_s"] for s in runs["workflow"]]
    raw = [r["hops_per_s"] for r in runs["raw"]]
    ratios = [w / r for w, r in zip(wf, raw, strict=True)]
    few = data[: max(1, rows // 5)]       # the slow variants on fewer rows (a rate does not need more)
    res = {
        "workflow, no coalescing": run_rows(ir, few, tmp, max_in_flight=in_flight, coalesce=False),
        "workflow, central": run_rows(ir, data, tmp, max_in_flight=in_flight, orchestrator="central"),
    }
    lone = {c: run_rows(ir, data[:10], tmp, max_in_flight=1, coalesce=c) for c in (True, False)}
    raw_med = statistics.median(raw)
    coal = relay("coalesced", in_flight, hops, payload)
    raw1 = relay("raw", 1, 200, payload)
    coal1 = relay("coalesced", 1, 200, payload)
    print(f"{'what':44} {'hops/s':>10} {'vs raw relay':>13}")
    tr = runs["workflow"][0]["transport"]
    print(f"{'workflow (p2p, coalesced)':44} {statistics.median(wf):10,.0f} {statistics.median(ratios):12.2f}x"
          f"   (ratios {', '.join(f'{x:.2f}' for x in ratios)}; mean batch {tr['mean_batch']:.1f})")
    for name, s in res.items():
        tr = s["transport"]
        print(f"{name:44} {s['hops_per_s']:10,.0f} {s['hops_per_s'] / raw_med:12.2f}x"
              f"   (mean batch {tr['mean_batch']:.1f}, max {tr['max_batch']})")
    print(f"{'raw per-message Ray actor relay':44} {raw_med:10,.0f} {1:12.2f}x"
          f"   ({', '.join(f'{x:,.0f}' for x in raw)})")
    print(f"{'transport only: coalesced relay':44} {coal['hops_per_s']:10,.0f} {coal['hops_per_s'] / raw_med:12.2f}x")
    print("per-hop latency (send -> receiver), relay:")
    print(f"  lone message: raw p50 {raw1['p50_ms']:.2f} ms p99 {raw1['p99_ms']:.2f} ms | "
          f"coalesced p50 {coal1['p50_ms']:.2f} ms p99 {coal1['p99_ms']:.2f} ms "
          f"(added p50 {coal1['p50_ms'] - raw1['p50_ms']:+.2f} ms, p99 {coal1['p99_ms'] - raw1['p99_ms']:+.2f} ms)")
    last_raw = runs["raw"][-1]
    print(f"  {in_flight} in flight: raw p50 {last_raw['p50_ms']:.2f} ms p99 {last_raw['p99_ms']:.2f} ms | "
          f"coalesced p50 {coal['p50_ms']:.2f} ms p99 {coal['p99_ms']:.2f} ms")
    for c, s in lone.items():
        print(f"  workflow, lone row, coalescing {'on ' if c else 'off'}: "
              f"{s['elapsed_s'] / max(s['steps'], 1) * 1e3:.2f} ms per step (render + sim round trip + route)")


def bench_schedule(rows: int, in_flight: int, tmp: str) -> None:
    rng = random.Random(3)
    data = [{"n": min(40, max(1, int(rng.paretovariate(1.0) * 2)))} for _ in range(rows)]
    steps = sum(r["n"] for r in data)
    print(f"== schedule: {rows} rows of 1..40 steps (mean {steps / rows:.1f}, max {max(r['n'] for r in data)}), "
          f"10-40 ms calls, {in_flight} in flight")
    ir = varied()
    out = {}
    for name, kw in (("row", {}), ("batch", {"schedule": "batch"}), ("central", {"orchestrator": "central"})):
        out[name] = run_rows(ir, data, tmp, max_in_flight=in_flight, **kw)
        s = out[name]
        print(f"  {name:8} elapsed {s['elapsed_s']:7.2f} s  {s['rows_per_s']:7.1f} rows/s  "
              f"{s['tokens_per_s']:9,.0f} tok/s")
    print(f"  batch / row elapsed = {out['batch']['elapsed_s'] / out['row']['elapsed_s']:.2f}x;"
          f"  central / row = {out['central']['elapsed_s'] / out['row']['elapsed_s']:.2f}x")


def rss(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_rss(n: int, tmp: str) -> tuple[int, dict]:
    """Peak resident memory (bytes) of the driver and the run's actors with n rows waiting in flight."""
    rows = [{"id": f"r{i}", "question": f"Question number {i}?", "choices": ["a", "b", "c", "d"]}
            for i in range(n)]
    peak = {"rss": 0}
    stop = threading.Event()
    run_id = f"mem{n}"

    def sample() -> None:
        while not stop.is_set():
            pids = [os.getpid()]
            for name in ("agent:teacher:0", "agent:student:0", "sim:0", "sink"):   # student idles
                with contextlib.suppress(Exception):    # not started yet, or finished
                    pids.append(ray.get(ray.get_actor(f"mx-{run_id}:{name}").ping.remote(), timeout=5)[1])
            if len(pids) == 5:
                with contextlib.suppress(OSError):
                    peak["rss"] = max(peak["rss"], sum(rss(p) for p in pids))
            time.sleep(0.25)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    s = run_rows(waiting(20.0), rows, tmp, max_in_flight=n, run_id=run_id, limit=n)
    stop.set()
    t.join()
    return peak["rss"], s


def bench_memory(tmp: str) -> None:
    print("== memory: coral rows, each waiting on one 20 s simulated call")
    small, s_small = run_rss(100, tmp)
    big, s_big = run_rss(10000, tmp)
    per_row = (big - small) / (s_big["peak_in_flight"] - s_small["peak_in_flight"])
    print(f"  {s_small['peak_in_flight']:6} in flight: {small / 2**20:8.1f} MiB (driver + 2 agents + sim + sink)")
    print(f"  {s_big['peak_in_flight']:6} in flight: {big / 2**20:8.1f} MiB")
    print(f"  => {per_row / 1024:.2f} KiB per in-flight row; 10,000 rows in flight take "
          f"{(big - small) / 2**20:.0f} MiB above the idle run")


def bench_offload(tmp: str) -> None:
    print("== offload: coral rows of 20 steps with ~1 KB replies (history up to ~20 KB)")
    rows = [{"id": f"o{i}", "question": "q", "choices": ["a", "b"]} for i in range(64)]
    res = {}
    for name, threshold in (("inline (no offloading)", -1), ("offloaded > 512 B", 512)):
        res[name] = s = run_rows(long_replies(), rows, tmp, max_in_flight=64, offload_threshold=threshold,
                                 measure_bytes=True)
        print(f"  {name:24} {s['bytes_per_hop']:9,.0f} B per hop   {s['hops_per_s']:7,.0f} hops/s   "
              f"freed {s['offload']['freed']}, still held {s['offload']['still_held']}")
    a, b = (r["bytes_per_hop"] for r in res.values())
    print(f"  => offloading moves {a / b:.1f}x fewer bytes per hop")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", default="hops,schedule,offload,memory")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--hops", type=int, default=20)
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved workflow/relay pairs (hops)")
    args = ap.parse_args()
    connect(None)
    print(f"machine: {os.cpu_count()} CPUs, Ray {ray.__version__}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for what in args.what.split(","):
            if what == "hops":
                bench_hops(args.rows, args.hops, args.in_flight, tmp, args.repeats)
            elif what == "schedule":
                bench_schedule(256, 32, tmp)
            elif what == "memory":
                bench_memory(tmp)
            elif what == "offload":
                bench_offload(tmp)
            else:
                raise SystemExit(f"unknown --what {what!r}")
    ray.shutdown()


if __name__ == "__main__":
    main()
