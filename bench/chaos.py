"""``python -m bench.chaos [--duration 600]``: the chaos run of docs/reliability.md (issue 11).

A three-node ``ray.cluster_utils.Cluster`` (head + 2 workers) lives in this process; ``mxc run
--address`` runs bench/workloads/chaos.mx on it as a subprocess (the driver), its critic model an
``mxc sim-server`` answering 5xx, 429 and stalled requests. For ``--duration`` seconds, at random
intervals, in shuffled cycles of every kind: SIGKILL an agent replica, the sink, a sim service, a tool
service (their pids from the GCS actor table), SIGKILL the driver and run it again with ``--resume``,
remove a worker node and add one back later, SIGKILL the sim-server and start it again on its port.
A run that completes starts the next over a fresh output. Then the faults stop, the last run is
resumed until done, and every output is counted (bench/chaos_count.py): lost, duplicated and torn
rows, every status and reason, the summary's claims against the file, and drivers that exited on their
own (exit 2 is expected: a resume while the killed run's sink still holds the output's lock; exit 3,
an internal error, is a bug). Writes bench/results/chaos.json and exits 1 if any row is lost,
duplicated, torn or wrong, a summary claims what the file lacks, or a driver failed with an internal
error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .chaos_count import check_summary, count_output, write_input

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = ROOT / "bench" / "workloads" / "chaos.mx"
KINDS = ("agent", "sink", "sim_service", "tool_service", "driver", "node", "sim_server")
ROLE = {"agent": ":agent:", "sink": ":sink", "sim_service": ":sim:", "tool_service": ":tool:"}
FAULTS = ["--error-rate", "0.03", "--throttle-rate", "0.05", "--timeout-rate", "0.02", "--timeout-hold", "8s",
          "--retry-after", "0"]


class Chaos:
    """The cluster, the sim-server, the driver of the current output, and the log of events."""

    def __init__(self, work: Path, rows: int, max_in_flight: int, seed: int) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self.work, self.rows, self.max_in_flight = work, rows, max_in_flight
        self.rng = random.Random(seed)
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "object_store_memory": 100 * 2**20})
        self.workers = [self._add_node() for _ in range(2)]
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, logging_level="ERROR", log_to_driver=False)
        self.port = _free_port()
        self.sim: subprocess.Popen | None = None
        self.start_sim_server()
        self.input = work / "in.jsonl"
        write_input(self.input, rows)
        self.outputs: list[dict[str, Any]] = []    # per output: path, drivers started, summaries
        self.driver: subprocess.Popen | None = None
        self.pending: list[tuple[float, str]] = []  # (when, "add_node" | "sim_server")

    # -- the pieces ---------------------------------------------------------------------------------
    def _add_node(self):
        return self.cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)

    def log(self, kind: str, detail: str = "", **extra: Any) -> None:
        ev = {"t": round(time.monotonic() - self.t0, 2), "kind": kind, "detail": detail, **extra}
        self.events.append(ev)
        print(f"[{ev['t']:8.2f}] {kind:14} {detail}", flush=True)

    def start_sim_server(self) -> None:
        from matrixlang.runtime.backends.simserver import SimServerProcess

        srv = SimServerProcess(["--port", str(self.port), "--seed", str(self.rng.randrange(1000)), *FAULTS,
                                "--ttft", "100ms", "--per-token", "2ms"])
        for _ in range(20):                     # the port may still be held for a moment
            try:
                srv.start()
                break
            except RuntimeError as e:
                last = e
                time.sleep(0.5)
        else:
            raise last
        self.sim = srv.proc

    def start_driver(self, resume: bool) -> None:
        """``mxc run`` over the current output (a new output when ``resume`` is false)."""
        if not resume:
            self.outputs.append({"output": str(self.work / f"out{len(self.outputs)}.jsonl"), "drivers": 0,
                                 "killed": 0, "exits": [], "summaries": []})
        cur = self.outputs[-1]
        k = cur["drivers"]
        cur["drivers"] += 1
        run_id = f"ch{len(self.outputs) - 1}d{k}"
        cur["summary_file"] = str(self.work / f"{run_id}.summary.json")
        cmd = [sys.executable, "-m", "matrixlang", "run", str(WORKLOAD), "--input", str(self.input),
               "--output", cur["output"], "--address", self.cluster.address, "--run-id", run_id,
               "--max-in-flight", str(self.max_in_flight), "--summary", cur["summary_file"],
               "--progress", "off", "--seed", str(len(self.outputs))]
        if resume:
            cmd.append("--resume")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["CHAOS_LLM_URL"] = f"http://127.0.0.1:{self.port}/v1"
        cur["log"] = str(self.work / f"{run_id}.log")
        with open(cur["log"], "w") as fh:
            self.driver = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.run_id = run_id
        self.log("driver_start", f"{run_id}{' --resume' if resume else ''} pid {self.driver.pid}")

    def actors(self, role: str) -> list[tuple[str, int, str]]:
        """(name, pid, node id) of the current run's live actors whose name holds ``role``."""
        import ray

        out = []
        for info in ray._private.state.actors().values():
            name = info.get("Name") or ""
            if (name.startswith(f"mx-{self.run_id}:") and role in name and info.get("State") == "ALIVE"
                    and info.get("Pid")):
                out.append((name, int(info["Pid"]), info.get("Address", {}).get("NodeID", "")))
        return out

    # -- the faults ---------------------------------------------------------------------------------
    def inject(self, kind: str) -> bool:
        """Inject one fault of ``kind``; False when there is nothing to hit now (try again soon)."""
        if kind in ROLE:
            found = self.actors(ROLE[kind])
            if not found:           # the run's actors are still starting
                return False
            name, pid, _ = self.rng.choice(found)
            if not _sigkill_actor(pid):
                return False
            self.log(kind, f"SIGKILL {name} pid {pid}")
        elif kind == "driver":
            if self.driver is None or self.driver.poll() is not None:
                return False
            os.kill(self.driver.pid, signal.SIGKILL)
            self.driver.wait()
            self.outputs[-1]["killed"] += 1
            self.log(kind, f"SIGKILL mxc run pid {self.driver.pid}")
            self.start_driver(resume=True)
        elif kind == "node":
            sink_nodes = {node for _, _, node in self.actors(ROLE["sink"])}
            victims = [w for w in self.workers if w.node_id not in sink_nodes]
            if len(self.workers) < 2 or not victims:     # a worker is out, or the sink is not placed yet
                return False
            victim = self.rng.choice(victims)
            hosted = [n for n, _, node in self.actors(":") if node == victim.node_id]
            self.cluster.remove_node(victim)
            self.workers.remove(victim)
            self.pending.append((time.monotonic() + self.rng.uniform(5, 20), "add_node"))
            self.log(kind, f"removed worker {victim.node_id[:12]} hosting {len(hosted)} actors", hosted=hosted)
        elif kind == "sim_server":
            if self.sim is None:
                return False
            self.sim.kill()
            self.sim.wait()
            self.sim = None
            down = self.rng.uniform(1, 8)
            self.pending.append((time.monotonic() + down, "sim_server"))
            self.log(kind, f"SIGKILL mxc sim-server, down for {down:.1f} s")
        return True

    def do_pending(self, now: float, force: bool = False) -> None:
        for item in [p for p in self.pending if force or p[0] <= now]:
            self.pending.remove(item)
            if item[1] == "add_node":
                self.workers.append(self._add_node())
                self.log("node_added", f"worker {self.workers[-1].node_id[:12]}")
            else:
                self.start_sim_server()
                self.log("sim_server_up", f"port {self.port}")

    def check_driver(self, finishing: bool) -> bool:
        """Start the next driver when this one exited: a new output after a completed run (unless
        ``finishing``), ``--resume`` after a failure. True once a finishing run has completed."""
        if self.driver is None or self.driver.poll() is None:
            return False
        rc, cur = self.driver.returncode, self.outputs[-1]
        if rc == 0:
            cur["summaries"].append(json.loads(Path(cur["summary_file"]).read_text()))
            self.log("run_done", f"{cur['output']} after {cur['drivers']} drivers")
            if finishing:
                self.driver = None
                return True
            self.start_driver(resume=False)
            return False
        tail = Path(cur["log"]).read_text(errors="replace").strip().splitlines()[-1:] or [""]
        cur["exits"].append({"rc": rc, "last_line": tail[0][:300]})
        self.log("driver_exit", f"rc {rc}: {tail[0][:200]}")
        time.sleep(2.0)                 # e.g. the killed run's sink still holds the output's lock
        self.start_driver(resume=True)
        return False

    def close(self) -> None:
        import ray

        if self.driver is not None and self.driver.poll() is None:
            self.driver.kill()
            self.driver.wait()
        if self.sim is not None:
            self.sim.kill()
            self.sim.wait()
        ray.shutdown()
        self.cluster.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sigkill_actor(pid: int) -> bool:
    """SIGKILL ``pid`` if it is still a Ray worker process (not a pid reused since)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if not cmd.startswith(b"ray::"):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def run_chaos(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mxchaos", dir=args.work_dir))
    load_before = os.getloadavg()
    started = time.time()
    ch = Chaos(work, args.rows, args.max_in_flight, args.seed)
    try:
        ch.start_driver(resume=False)
        t_faults = time.time()
        deadline = time.monotonic() + args.duration
        cycle: list[str] = []
        next_at = time.monotonic() + ch.rng.uniform(args.gap / 2, args.gap * 1.5)
        while time.monotonic() < deadline:
            now = time.monotonic()
            ch.do_pending(now)
            ch.check_driver(finishing=False)
            if now >= next_at:
                cycle = cycle or ch.rng.sample(KINDS, len(KINDS))
                if ch.inject(cycle[-1]):
                    cycle.pop()
                    next_at = now + ch.rng.uniform(args.gap / 2, args.gap * 1.5)
                else:
                    next_at = now + 1.0          # nothing to hit yet: the same kind again in a second
            time.sleep(0.2)
        ch.log("faults_end", "no more faults; restoring the cluster and the sim-server, finishing the run")
        ch.do_pending(time.monotonic(), force=True)
        finish_by = time.monotonic() + args.finish_timeout
        while not ch.check_driver(finishing=True):
            if time.monotonic() > finish_by:
                raise SystemExit(f"chaos: the last run did not finish within {args.finish_timeout} s; "
                                 f"its log: {ch.outputs[-1]['log']}")
            time.sleep(0.5)
        finish_s = time.time() - t_faults - args.duration
    finally:
        ch.close()
    outputs = []
    for o in ch.outputs:
        counted = count_output(Path(o["output"]), args.rows)
        last = o["summaries"][-1] if o["summaries"] else None
        counted.update(drivers=o["drivers"], drivers_killed=o["killed"], driver_exits=o["exits"],
                       internal_errors=sum(1 for x in o["exits"] if x["rc"] == 3),
                       summary_check=check_summary(last, counted),
                       readmitted=last["readmitted"] if last else None,
                       actor_restarts=last["actor_restarts"] if last else None,
                       torn_bytes_cut=last["torn_bytes_cut"] if last else None)
        outputs.append(counted)
    injected = [e for e in ch.events if e["kind"] in KINDS]
    totals = {k: sum(o[k] for o in outputs) for k in ("input_rows", "lost", "duplicated", "torn", "wrong",
                                                       "unknown_ids", "internal_errors")}
    by_status: dict[str, int] = {}
    for o in outputs:
        for k, v in o["by_status"].items():
            by_status[k] = by_status.get(k, 0) + v
    return {
        "command": "python -m bench.chaos " + " ".join(sys.argv[1:]),
        "duration_s": args.duration, "wall_s": round(time.time() - started, 1),
        "finish_after_faults_s": round(finish_s, 1),
        "rows_per_output": args.rows, "outputs_completed": len(outputs),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "faults": {k: sum(1 for e in injected if e["kind"] == k) for k in KINDS},
        "totals": {**totals, "by_status": dict(sorted(by_status.items()))},
        "summaries_agree": all(o["summary_check"].get("agrees") for o in outputs),
        "outputs": outputs, "events": ch.events, "work_dir": str(work),
    }


def table(res: dict[str, Any]) -> str:
    lines = [f"chaos run: {res['duration_s']} s of faults, {res['wall_s']} s in all, "
             f"load {res['load_before']} -> {res['load_after']}",
             "faults: " + ", ".join(f"{k} {v}" for k, v in res["faults"].items()),
             f"{'output':>8} {'rows':>6} {'lost':>5} {'dup':>5} {'torn':>5} {'wrong':>5} {'drivers':>7} "
             f"{'summary':>8}  statuses"]
    for i, o in enumerate(res["outputs"]):
        agree = "agrees" if o["summary_check"].get("agrees") else "DIFFERS"
        lines.append(f"{i:>8} {o['lines']:>6} {o['lost']:>5} {o['duplicated']:>5} {o['torn']:>5} {o['wrong']:>5} "
                     f"{o['drivers']:>7} {agree:>8}  {o['by_status']}")
    t = res["totals"]
    exits = [x for o in res["outputs"] for x in o["driver_exits"]]
    lines.insert(2, f"drivers that exited on their own (not killed): {len(exits)}, internal errors "
                    f"{t['internal_errors']}" + "".join(f"\n  rc {x['rc']}: {x['last_line'][:150]}" for x in exits))
    lines.append(f"{'total':>8} {t['input_rows']:>6} {t['lost']:>5} {t['duplicated']:>5} {t['torn']:>5} "
                 f"{t['wrong']:>5} {'':>7} {'':>8}  {t['by_status']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of faults (600)")
    ap.add_argument("--gap", type=float, default=8.0, help="mean seconds between faults (8)")
    ap.add_argument("--rows", type=int, default=600, help="input rows per output (600)")
    ap.add_argument("--max-in-flight", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--finish-timeout", type=float, default=900.0, help="seconds to finish the last run (900)")
    ap.add_argument("--work-dir", default="/tmp", help="where the run's files go (a new folder in it)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chaos.json")
    args = ap.parse_args(argv)
    if args.duration <= 0 or args.gap <= 0 or args.rows < 1 or args.max_in_flight < 1:
        ap.error("--duration and --gap must be > 0, --rows and --max-in-flight >= 1")
    res = run_chaos(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(table(res))
    t = res["totals"]
    bad = (t["lost"] or t["duplicated"] or t["torn"] or t["wrong"] or t["unknown_ids"] or t["internal_errors"]
           or not res["summaries_agree"])
    print(f"{'FAIL' if bad else 'ok'}: results in {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
