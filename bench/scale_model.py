"""Item 6: a discrete-event MODEL (not a measurement) of the runtime at the paper's scale.

It predicts throughput against the number of nodes (8 GPUs each, 400 rows in flight per node:
12,400 at 31 nodes) for peer-to-peer and central orchestration. Its inputs:

* **measured CPU costs** (item 3 and in-process timing): per step at the agent (transport + the
  workload's step logic), per routed message at the central coordinator, per row at the driver and
  at the sink; the coordinator is one process (one core), as are the sink and each driver;
* **several drivers** (``Scenario.drivers``, ``mxc run --drivers N``): each admits its share of the
  rows on a core of its own, and a shard pays more per row it admits than one driver does (smaller
  batches per Ray call, a poll of its own): ``Costs.driver_growth`` holds that factor per N, measured
  by bench/drivers.py (bench/results/drivers.json); :func:`driver_ceiling` is the rows/s cap;
* **the workloads' own traces**: each row's sequence of calls (model, completion tokens), produced
  by the runtime's Engine with the simulated replies, so step counts and branching are the real ones;
* **the simulator's latency model** (runtime.simmodel.SimCapacity: ttft + tokens * per_token *
  (1 + 0.5 * active / max_concurrency), FIFO queueing on full replicas);
* **assumptions**, all in :class:`Scenario`: LLM latencies are the bench workloads' times
  ``gpu_latency_scale`` (x4: 10 ms/token for coral) on GPUs running ``seqs_per_gpu`` sequences;
  GPUs are split between a workload's models in proportion to their demand; ``agent_cores_per_node``
  cores per node run agent actors; every message takes ``net_s``; tools are not GPU work.

Modes: ``p2p`` (agents route), ``central`` (every step result crosses the coordinator, which only
routes: our ``--orchestrator central``), ``central_full`` (the hub also runs the step logic, like a
classic orchestrator loop; agents only transport)."""

from __future__ import annotations

import heapq
import json
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from matrixlang.runtime.backends.simmodel import SimCapacity, sim_reply
from matrixlang.runtime.semantics.engine import Engine, Reply

from .catalog import WORKLOADS

# ---- inputs ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Costs:
    """CPU seconds: per step at the agent (transport only), per routed message at the coordinator,
    per row at the driver and the sink; plus the workload's step logic (Engine) per step. The
    ``*_1msg_s`` costs are those of every message travelling in its own Ray call (coalescing off):
    an upper bound, for a hub whose messages fan out to too many destinations to batch."""

    agent_transport_s: float
    coord_hop_s: float
    driver_row_s: float
    sink_row_s: float
    engine_step_s: dict[str, float] = field(default_factory=dict)
    agent_transport_1msg_s: float | None = None
    coord_hop_1msg_s: float | None = None
    driver_growth: dict[int, float] = field(default_factory=dict)   # N -> a shard's CPU per row it admits / one driver's


DRIVERS_RESULT = Path(__file__).resolve().parent / "results" / "drivers.json"


def driver_growth(path: Path = DRIVERS_RESULT, counts: tuple[int, ...] = (1, 2, 4, 8, 16, 32)) -> dict[int, float]:
    """Per driver count N: the driver side's CPU per row with N shards over that of one driver (which
    is also each shard's CPU per row it admits over one driver's), from bench/drivers.py: measured
    where measured, else the least-squares line ``a + b·N`` through the measurements. Empty when the
    file is missing (then every shard is assumed to cost what one driver does)."""
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    per = {int(n): v["driver_cpu_ms_per_row"] for n, v in res["per_drivers"].items() if v.get("driver_cpu_ms_per_row")}
    if 1 not in per:
        return {}
    a, b = res["model"]["driver_row_ms"], res["model"]["driver_row_ms_per_shard"]
    return {n: (per[n] if n in per else a + b * n) / per[1] for n in counts}


def driver_row_cost(costs: Costs, n: int) -> float:
    """CPU seconds a driver shard spends per row it admits, with ``n`` shards."""
    if n == 1 or not costs.driver_growth:
        return costs.driver_row_s
    g = costs.driver_growth
    if n in g:
        return costs.driver_row_s * g[n]
    lo, hi = max(k for k in g if k <= n), min((k for k in g if k >= n), default=max(g))
    if hi == lo:           # past the last: the slope of the last two
        k = sorted(g)
        slope = (g[k[-1]] - g[k[-2]]) / (k[-1] - k[-2]) if len(k) > 1 else 0.0
        return costs.driver_row_s * (g[lo] + slope * (n - lo))
    return costs.driver_row_s * (g[lo] + (g[hi] - g[lo]) * (n - lo) / (hi - lo))


def driver_ceiling(costs: Costs, n: int) -> float:
    """Rows/s that ``n`` driver shards admit at most, each on a core of its own."""
    return n / driver_row_cost(costs, n)


@dataclass(slots=True)
class Scenario:
    """One modelled cluster; see the module docstring for what each assumption means."""

    nodes: int
    mode: str = "p2p"
    gpus_per_node: int = 8
    rows_per_node: int = 400
    seqs_per_gpu: int = 64
    gpu_latency_scale: float = 4.0
    agent_cores_per_node: int = 8
    net_s: float = 0.0005
    per_message: bool = False          # the *_1msg_s costs (no coalescing) instead of the batched ones
    drivers: int = 1                   # driver shards (mxc run --drivers), one core each
    warm_s: float = 40.0
    measure_s: float = 60.0
    seed: int = 0


def workload_traces(name: str, n_rows: int, seed: int = 0) -> tuple[list[list[tuple[str, int]]], float]:
    """Each row's calls ``(model, completion tokens)`` and the Engine's CPU seconds per step."""
    wl = WORKLOADS[name]
    ir = wl.ir()
    eng = Engine(ir, seed=seed, backend="sim")
    rows = wl.rows(n_rows, seed)
    traces, steps = [], 0
    t0 = time.process_time()
    for i, row in enumerate(rows):
        msg = eng.new_message(json.dumps(row), i, 0.0)
        calls = []
        while not msg.finished:
            call = eng.prepare_call(msg, [])
            text = sim_reply(call.sim_text, call.sim_tokens, call.seed_key)
            eng.apply_reply(msg, Reply(text, call.prompt_tokens, call.sim_tokens), [], 0.0)
            calls.append((call.model, call.sim_tokens))
        steps += len(calls)
        traces.append(calls)
    return traces, (time.process_time() - t0) / max(steps, 1)


def engine_step_s(ir: dict, rows: list[dict]) -> float:
    """CPU seconds per step of the Engine alone on ``rows`` (any IR, e.g. bench/programs.py pingpong)."""
    eng = Engine(ir, backend="sim")
    steps = 0
    t0 = time.process_time()
    for i, row in enumerate(rows):
        msg = eng.new_message(json.dumps(row), i, 0.0)
        while not msg.finished:
            call = eng.prepare_call(msg, [])
            eng.apply_reply(msg, Reply(sim_reply(call.sim_text, call.sim_tokens, call.seed_key), 1, 1), [], 0.0)
            steps += 1
    return (time.process_time() - t0) / max(steps, 1)


# ---- the discrete-event core -------------------------------------------------------------------------


class _Loop:
    __slots__ = ("t", "q", "n")

    def __init__(self) -> None:
        self.t, self.q, self.n = 0.0, [], 0

    def at(self, t: float, fn: Callable, *args) -> None:
        self.n += 1
        heapq.heappush(self.q, (t, self.n, fn, args))

    def run(self, until: float) -> None:
        q = self.q
        while q and q[0][0] <= until:
            t, _, fn, args = heapq.heappop(q)
            self.t = t
            fn(*args)


class _Cores:
    """``k`` identical CPU cores serving jobs FIFO; tracks busy seconds."""

    __slots__ = ("loop", "free", "queue", "busy_s")

    def __init__(self, loop: _Loop, k: int) -> None:
        self.loop, self.free, self.queue, self.busy_s = loop, k, deque(), 0.0

    def submit(self, service_s: float, then: Callable, *args) -> None:
        if self.free > 0:
            self.free -= 1
            self.busy_s += service_s
            self.loop.at(self.loop.t + service_s, self._done, then, args)
        else:
            self.queue.append((service_s, then, args))

    def _done(self, then: Callable, args: tuple) -> None:
        if self.queue:
            s, th, a = self.queue.popleft()
            self.busy_s += s
            self.loop.at(self.loop.t + s, self._done, th, a)
        else:
            self.free += 1
        then(*args)


class _Row:
    __slots__ = ("trace", "i")

    def __init__(self, trace: list) -> None:
        self.trace, self.i = trace, 0


def gpu_split(traces: list, llm: tuple[str, ...], gpus: int, ir: dict) -> dict[str, int]:
    """GPUs per LLM model in proportion to its demand (sum of idle call durations), at least one."""
    demand = dict.fromkeys(llm, 0.0)
    for tr in traces:
        for model, tok in tr:
            if model in demand:
                sim = ir["models"][model]["sim"]
                demand[model] += sim["ttft_s"] + tok * sim["per_token_s"]
    total = sum(demand.values()) or 1.0
    split = {m: max(1, round(gpus * d / total)) for m, d in demand.items()}
    while sum(split.values()) > gpus and max(split.values()) > 1:
        split[max(split, key=split.get)] -= 1
    return split


def simulate(name: str, traces: list, costs: Costs, sc: Scenario) -> dict:
    """Run one scenario; returns throughput and the utilisation of each CPU resource and the GPUs."""
    wl = WORKLOADS[name]
    ir = wl.ir()
    rng = random.Random(sc.seed)
    loop = _Loop()
    gpus = gpu_split(traces, wl.llm_models, sc.nodes * sc.gpus_per_node, ir)
    pools: dict[str, SimCapacity] = {}
    for m, model in ir["models"].items():
        sim = model["sim"]
        if m in wl.llm_models:
            pools[m] = SimCapacity(gpus[m], sc.seqs_per_gpu, sim["ttft_s"] * sc.gpu_latency_scale,
                                   sim["per_token_s"] * sc.gpu_latency_scale)
        else:   # a tool service: no GPU, effectively unbounded
            pools[m] = SimCapacity(1, 10**9, sim["ttft_s"], sim["per_token_s"])
    agents = [_Cores(loop, sc.agent_cores_per_node) for _ in range(sc.nodes)]
    coord, sink = _Cores(loop, 1), _Cores(loop, 1)
    drivers = [_Cores(loop, 1) for _ in range(sc.drivers)]
    driver_s = driver_row_cost(costs, sc.drivers)
    eng = costs.engine_step_s[name]
    central = sc.mode in ("central", "central_full")
    transport = costs.agent_transport_1msg_s if sc.per_message else costs.agent_transport_s
    hub = costs.coord_hop_1msg_s if sc.per_message else costs.coord_hop_s
    agent_s = transport + (0.0 if sc.mode == "central_full" else eng)
    coord_s = hub + (eng if sc.mode == "central_full" else 0.0)
    net = sc.net_s
    llm = set(wl.llm_models)
    t_lo, t_hi = sc.warm_s, sc.warm_s + sc.measure_s
    count = {"tokens": 0, "hops": 0, "rows": 0}
    snap: dict[str, float] = {}

    def step(row: _Row) -> None:
        agents[rng.randrange(sc.nodes)].submit(agent_s, request, row)

    def request(row: _Row) -> None:
        loop.at(loop.t + net, acquire, row)

    def acquire(row: _Row) -> None:
        pool = pools[row.trace[row.i][0]]
        r = pool.acquire(row)
        if r is not None:
            start(row, r)

    def start(row: _Row, r: int) -> None:
        model, tok = row.trace[row.i]
        pool = pools[model]
        loop.at(loop.t + pool.duration(tok, pool.active(r)), finish, row, r)

    def finish(row: _Row, r: int) -> None:
        model, tok = row.trace[row.i]
        for ticket, granted in pools[model].release(r):
            start(ticket, granted)
        if t_lo <= loop.t < t_hi:
            count["hops"] += 1
            if model in llm:
                count["tokens"] += tok
        loop.at(loop.t + net, reply, row)

    def reply(row: _Row) -> None:
        row.i += 1
        if row.i >= len(row.trace):
            if central:   # the output line crosses the hub too
                loop.at(loop.t + net, coord.submit, coord_s, to_sink)
            else:
                to_sink()
        elif central:
            loop.at(loop.t + net, coord.submit, coord_s, dispatch, row)
        else:
            loop.at(loop.t + net, step, row)

    def to_sink() -> None:
        loop.at(loop.t + net, sink.submit, costs.sink_row_s, done)

    def dispatch(row: _Row) -> None:
        loop.at(loop.t + net, step, row)

    def done() -> None:
        if t_lo <= loop.t < t_hi:
            count["rows"] += 1
        shard = drivers[rng.randrange(sc.drivers)] if sc.drivers > 1 else drivers[0]
        shard.submit(driver_s, admit)

    def admit() -> None:
        row = _Row(traces[rng.randrange(len(traces))])
        if central:
            loop.at(loop.t + net, coord.submit, coord_s, dispatch, row)
        else:
            loop.at(loop.t + net, step, row)

    n_rows = sc.nodes * sc.rows_per_node
    for _ in range(n_rows):   # the initial fill, spread over the first 2 s
        loop.at(rng.uniform(0.0, 2.0), step, _Row(traces[rng.randrange(len(traces))]))

    def mark() -> None:
        snap.update(coord=coord.busy_s, driver=sum(d.busy_s for d in drivers), sink=sink.busy_s,
                    agents=sum(a.busy_s for a in agents))

    loop.at(t_lo, mark)
    wall0 = time.perf_counter()
    loop.run(t_lo)
    loop.run(t_hi)
    span = sc.measure_s
    util = {"coordinator": (coord.busy_s - snap["coord"]) / span if central else 0.0,
            "driver": (sum(d.busy_s for d in drivers) - snap["driver"]) / (span * sc.drivers),
            "sink": (sink.busy_s - snap["sink"]) / span,
            "agent_cores": (sum(a.busy_s for a in agents) - snap["agents"]) / (span * sc.nodes * sc.agent_cores_per_node)}
    return {"nodes": sc.nodes, "mode": sc.mode, "rows_in_flight": n_rows, "gpus": gpus,
            "tokens_per_s": count["tokens"] / span, "hops_per_s": count["hops"] / span,
            "rows_per_s": count["rows"] / span, "utilisation": {k: round(min(v, 1.0), 4) for k, v in util.items()},
            "backlog": {"coordinator": len(coord.queue), "driver": sum(len(d.queue) for d in drivers),
                        "sink": len(sink.queue)},
            "sim_wall_s": round(time.perf_counter() - wall0, 2)}


# ---- calibration and the section ---------------------------------------------------------------------


def calibrate(overhead: dict, engine_costs: dict[str, float]) -> Costs:
    """Costs from the overhead section (zero-latency runs: large coalesced batches, the regime of a
    saturated coordinator, which is the most favourable to it) and in-process Engine timings."""
    from .programs import pingpong

    s = overhead["summary"]["cpu_per_hop_ms"]
    ping_engine = engine_step_s(pingpong(overhead["hops"]), [{"id": i} for i in range(50)])

    def transport(flow: str) -> float:
        return max(s[flow]["agents"]["median"] / 1e3 - ping_engine, 1e-6)

    return Costs(agent_transport_s=transport("workflow"),
                 coord_hop_s=s["workflow_central"]["coordinator"]["median"] / 1e3,
                 driver_row_s=overhead["summary"]["driver_ms_per_row"]["median"] / 1e3,
                 sink_row_s=overhead["summary"]["sink_ms_per_row"]["median"] / 1e3,
                 engine_step_s=dict(engine_costs),
                 agent_transport_1msg_s=transport("workflow_no_coalescing"),
                 coord_hop_1msg_s=s["workflow_central_no_coalescing"]["coordinator"]["median"] / 1e3,
                 driver_growth=driver_growth())


# curve name -> (mode, per_message costs)
MODES_MODELLED = {"p2p": ("p2p", False), "central": ("central", False), "central_full": ("central_full", False),
                  "p2p_per_message": ("p2p", True), "central_per_message": ("central", True)}


def validate(cfg, traces: list, costs: Costs, measured: dict) -> dict:
    """The model of *this* machine's coral runs (one node: the suite's fleet, latencies and rows in
    flight; 2 cores for the agents) next to the measured tokens/s of the scheduling section."""
    wl = WORKLOADS["coral"]
    sim = wl.ir()["models"]["llm"]["sim"]
    out = {}
    for mode in ("p2p", "central"):
        sc = Scenario(nodes=1, mode=mode, gpus_per_node=sim["replicas"],
                      seqs_per_gpu=max(1, round(sim["max_concurrency"] * cfg.slots_scale)),
                      rows_per_node=cfg.in_flight, gpu_latency_scale=cfg.latency_scale, agent_cores_per_node=2,
                      warm_s=cfg.scale_warm_s, measure_s=cfg.scale_measure_s)
        p = simulate("coral", traces, costs, sc)
        got = measured["per_mode"][mode]["steady_tokens_per_s"]["median"]
        out[mode] = {"model_tokens_per_s": p["tokens_per_s"], "measured_steady_tokens_per_s": got,
                     "measured/model": got / p["tokens_per_s"] if got and p["tokens_per_s"] else None}
    return out


def _findings(modes: dict[str, list[dict]], costs: Costs, engine_s: float) -> dict:
    """Where each hub curve saturates (coordinator busy >= 95%), the caps, and P2P over central at
    the largest cluster."""
    def saturates(curve: str) -> int | None:
        return next((p["nodes"] for p in modes[curve] if p["utilisation"]["coordinator"] >= 0.95), None)

    last = {m: modes[m][-1] for m in MODES_MODELLED}
    top = last["p2p"]["nodes"]

    def vs(a: str, b: str) -> float | None:
        return last[a]["tokens_per_s"] / last[b]["tokens_per_s"] if last[b]["tokens_per_s"] else None

    return {
        "coordinator_saturates_at_nodes": saturates("central"),
        "coordinator_per_message_saturates_at_nodes": saturates("central_per_message"),
        "hub_with_step_logic_saturates_at_nodes": saturates("central_full"),
        "central_hops_per_s_cap": 1.0 / costs.coord_hop_s,
        "central_per_message_hops_per_s_cap": 1.0 / costs.coord_hop_1msg_s,
        "central_full_hops_per_s_cap": 1.0 / (costs.coord_hop_s + engine_s),
        "driver_rows_per_s_cap": 1.0 / costs.driver_row_s,
        "driver_rows_per_s_cap_by_drivers": {str(n): driver_ceiling(costs, n) for n in (1, 2, 4, 8, 16)},
        f"p2p/central tokens_per_s at {top} nodes": vs("p2p", "central"),
        f"p2p/central_full tokens_per_s at {top} nodes": vs("p2p", "central_full"),
        f"p2p/central tokens_per_s at {top} nodes, per-message costs": vs("p2p_per_message", "central_per_message"),
        "p2p_driver_utilisation_at_max_nodes": last["p2p"]["utilisation"]["driver"]}


def run_scale_model(cfg, overhead: dict, log: Callable[[str], None], measured: dict | None = None) -> dict:
    """Curves (throughput vs nodes) per workload and mode, and where the coordinator saturates;
    with ``measured`` (the scheduling section), the model of this machine's coral runs next to them."""
    traces, eng = {}, {}
    for name in cfg.scale_workloads:
        traces[name], eng[name] = workload_traces(name, cfg.scale_traces)
    costs = calibrate(overhead, eng)
    log(f"scale model costs (ms): agent transport {costs.agent_transport_s * 1e3:.3f}/step "
        f"({costs.agent_transport_1msg_s * 1e3:.3f} per message), coordinator {costs.coord_hop_s * 1e3:.3f}/hop "
        f"({costs.coord_hop_1msg_s * 1e3:.3f} per message), driver {costs.driver_row_s * 1e3:.3f}/row, sink "
        f"{costs.sink_row_s * 1e3:.3f}/row, engine " + ", ".join(f"{k} {v * 1e3:.3f}" for k, v in eng.items()))
    curves: dict[str, dict] = {}
    for name in cfg.scale_workloads:
        curves[name] = {}
        for curve, (mode, per_msg) in MODES_MODELLED.items():
            pts = []
            for n in cfg.scale_nodes:
                sc = Scenario(nodes=n, mode=mode, per_message=per_msg, warm_s=cfg.scale_warm_s,
                              measure_s=cfg.scale_measure_s)
                p = simulate(name, traces[name], costs, sc)
                pts.append(p)
                log(f"scale model {name:9} {curve:20} {n:3} nodes: {p['tokens_per_s']:11,.0f} tok/s "
                    f"{p['hops_per_s']:9,.0f} hops/s  coordinator {p['utilisation']['coordinator']:.2f}  "
                    f"driver {p['utilisation']['driver']:.2f}  ({p['sim_wall_s']} s)")
            curves[name][curve] = pts
    findings = {name: _findings(modes, costs, costs.engine_step_s[name]) for name, modes in curves.items()}
    check = None
    if measured and "coral" in measured and "coral" in traces:
        check = validate(cfg, traces["coral"], costs, measured["coral"])
        log("scale model vs this machine (coral, steady tokens/s): " + ", ".join(
            f"{m} measured {v['measured_steady_tokens_per_s'] or 0:,.0f} / model {v['model_tokens_per_s']:,.0f}"
            for m, v in check.items()))
    return {"label": "MODEL (discrete-event simulation calibrated with measured CPU costs), not a measurement",
            "validation_this_machine": check,
            "costs_ms": {"agent_transport": costs.agent_transport_s * 1e3, "coordinator_per_hop": costs.coord_hop_s * 1e3,
                         "agent_transport_per_message": costs.agent_transport_1msg_s * 1e3,
                         "coordinator_per_message": costs.coord_hop_1msg_s * 1e3,
                         "driver_per_row": costs.driver_row_s * 1e3, "sink_per_row": costs.sink_row_s * 1e3,
                         "driver_growth_by_drivers": {str(n): g for n, g in costs.driver_growth.items()},
                         "engine_per_step": {k: v * 1e3 for k, v in eng.items()}},
            "assumptions": {k: v for k, v in asdict(Scenario(nodes=31)).items() if k not in ("nodes", "mode", "seed")}
            | {"warm_s": cfg.scale_warm_s, "measure_s": cfg.scale_measure_s},
            "nodes": list(cfg.scale_nodes), "curves": curves, "findings": findings}
