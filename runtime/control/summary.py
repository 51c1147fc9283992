"""The run summary: its fields (``RunSummary``, what `mxc run --summary` writes as JSON and `run()`
returns) and how they are computed from the driver's result and the actors' stats."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, TypedDict

from .cluster import Topology
from .progress import percentile

if TYPE_CHECKING:
    from ..semantics.engine import Engine
    from .run import RunOptions


class RunSummary(TypedDict, total=False):
    """What a run did, as written to ``--summary`` (JSON) and returned by ``run()``."""
    workflow: str
    workflow_hash: str
    output: str                      # the output file (the journal while a non-JSONL run is unfinished)
    rows: int                        # rows written by this run (not counting skipped_done)
    by_status: dict[str, int]
    by_reason: dict[str, int]
    elapsed_s: float                 # first admission to last completion
    rows_per_s: float
    tokens: int                      # completion tokens
    prompt_tokens: int
    tokens_per_s: float
    steps: int
    hops_per_s: float
    peak_in_flight: int
    max_in_flight: int
    schedule: str
    orchestrator: str
    seed: int
    colocated: list[list[str]]
    backend: str
    agents: dict[str, dict[str, Any]]  # per role: replicas, calls, replica_calls, p50_s, p95_s, mean_s
    skipped_done: int                # rows already in the output (--resume)
    duplicate_ids: int
    input_rows: int
    retried_errors: int
    readmitted: int
    lost: int
    actor_restarts: int
    lost_scans: int
    transport: dict[str, Any]
    offload: dict[str, Any]
    bytes_per_hop: float | None
    sink: dict[str, Any]
    torn_bytes_cut: int
    wall_s: float
    pid: int
    services: dict[str, Any]
    clients: dict[str, dict[str, Any]]  # per openai model: counters, per endpoint the adaptive limits
    adaptive_concurrency: bool
    nodes: dict[str, str]
    cluster: dict[str, Any]
    stopped: str | None              # why the run stopped before the end (a full disk), else None
    drivers: int
    trials: int
    until_ok: int | None
    ok_rows: int
    ended: str                       # why admission ended
    input: str
    input_format: str
    journal: str
    output_format: str
    output_rows: int


CLIENT_COUNTERS = ("calls", "ok", "failed", "attempts", "retries", "retry_after", "throttled", "throttle_free",
                   "outage_waits")
AIMD_COUNTERS = ("decreases", "latency_decreases", "increases", "pauses", "waited")


def client_totals(stats: dict) -> dict:
    """Per openai model, the counters of its clients in every agent actor summed; per endpoint URL, the
    adaptive limits (lowest and highest now, decreases, pauses, ...) over those clients."""
    out: dict[str, dict] = {}
    for s in stats.values():
        clients = s.get("clients") if isinstance(s, dict) else None
        for model, c in (clients or {}).items():
            if "calls" not in c:                # a vllm ServeClient: other counters
                continue
            t = out.setdefault(model, {k: 0 for k in CLIENT_COUNTERS} | {"clients": 0, "http": [], "endpoints": {}})
            t["clients"] += 1
            if c.get("http") and c["http"] not in t["http"]:     # the HTTP client(s): "lean", "aiohttp"
                t["http"].append(c["http"])
            for k in CLIENT_COUNTERS:
                t[k] += c.get(k, 0)
            for e in c.get("endpoints", []):
                a = e.get("aimd")
                if a is None:
                    continue
                d = t["endpoints"].setdefault(e["url"], {k: 0 for k in AIMD_COUNTERS} | {
                    "limit_min": a["limit"], "limit_max": a["limit"], "paused_s": 0.0})
                for k in AIMD_COUNTERS:
                    d[k] += a[k]
                d["paused_s"] = round(d["paused_s"] + a["paused_s"], 3)
                d["limit_min"], d["limit_max"] = min(d["limit_min"], a["limit"]), max(d["limit_max"], a["limit"])
    return out


def build_summary(engine: Engine, opts: RunOptions, topo: Topology, res: Any, stats: dict, sink_stats: dict,
                  out_path: str, t_start: float, cut: int) -> RunSummary:
    """The summary of a run from its driver's result, the actors' stats and the sink's; run.py adds the
    rest (cluster, stopped, drivers, trials, until_ok, ended, input, output_rows, journal)."""
    elapsed = (res.last_done - res.first_admit) if res.first_admit and res.last_done else 0.0
    elapsed = max(elapsed, 0.0)
    per = (lambda x: x / elapsed) if elapsed > 0 else (lambda x: 0.0)
    agents = {}
    calls_total, batches, items, max_batch, hop_bytes, hops = 0, 0, 0, 0, 0, 0
    for role in topo.roles:
        lat: list[float] = []
        calls = 0
        per_replica = []
        for name in topo.agents(role):
            s = stats.get(name, {}).get("roles", {}).get(role, {})
            lat.extend(s.get("latencies", []))
            calls += s.get("calls", 0)
            per_replica.append(s.get("calls", 0))
        calls_total += calls
        agents[role] = {"replicas": topo.roles[role], "calls": calls, "replica_calls": per_replica,
                        "p50_s": percentile(lat, 0.5), "p95_s": percentile(lat, 0.95),
                        "mean_s": sum(lat) / len(lat) if lat else None}
    for name in topo.all_agents():
        hop_bytes += stats.get(name, {}).get("hop_bytes", 0)
        hops += stats.get(name, {}).get("hops", 0)
    for s in stats.values():
        ob = s.get("outbox") if isinstance(s, dict) else None
        if ob:
            batches += ob["calls"]
            items += ob["items"]
            max_batch = max(max_batch, ob["max_batch"])
    store = sink_stats.get("offload", {})
    return {
        "workflow": engine.workflow_name, "workflow_hash": engine.workflow_hash,
        "output": out_path, "rows": res.rows,
        "by_status": dict(sorted(res.by_status.items())), "by_reason": dict(sorted(res.by_reason.items())),
        "elapsed_s": elapsed, "rows_per_s": per(res.rows),
        "tokens": res.completion_tokens, "prompt_tokens": res.prompt_tokens,
        "tokens_per_s": per(res.completion_tokens),
        "steps": res.steps, "hops_per_s": per(res.steps),
        "peak_in_flight": res.peak_in_flight, "max_in_flight": opts.max_in_flight,
        "schedule": opts.schedule, "orchestrator": opts.orchestrator, "seed": opts.seed,
        "colocated": topo.groups,
        "backend": opts.backend, "agents": agents,
        "skipped_done": res.skipped_done, "duplicate_ids": res.duplicate_ids, "input_rows": res.input_rows,
        "retried_errors": opts.retried_errors,
        "readmitted": res.readmitted, "lost": res.lost, "actor_restarts": res.deaths, "lost_scans": res.scans,
        "transport": {"coalesce": opts.coalesce, "calls": batches, "items": items, "max_batch": max_batch,
                      "mean_batch": items / batches if batches else 0.0},
        "offload": {"threshold": opts.offload_threshold, "put": store.get("put", 0),
                    "freed": store.get("freed", 0), "still_held": store.get("held", 0)},
        "bytes_per_hop": hop_bytes / hops if hops else None,
        "sink": sink_stats, "torn_bytes_cut": cut,
        "wall_s": time.time() - t_start, "pid": os.getpid(),
        "services": {k: v for k, v in stats.items() if ":sim:" in k},
        "clients": client_totals(stats), "adaptive_concurrency": opts.adaptive_concurrency,
        "nodes": {k: v["node"] for k, v in stats.items() if isinstance(v, dict) and "node" in v},
    }
