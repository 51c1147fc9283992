"""``run(ir, opts)``: execute a workflow's IR over an input file on Ray and return the run summary.

It checks the options, prepares the output (``--resume``/``--overwrite``), connects to Ray, starts the
run's actors (the sink on the driver's node, sim services, tool services, agent replicas spread over
the cluster, and the coordinator in central mode), drives the rows through them, and tears everything
down again, leaving Ray as it found it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..actors.agent import AgentActor, AgentConfig
from ..actors.coordinator import Coordinator
from ..actors.sim_service import SimService
from ..actors.sink import OutputLocked, Sink
from ..data.inputs import InputError, Source, open_input
from ..data.outputs import (
    OutputError,
    drop_status,
    finalize,
    journal_path,
    output_exists,
    output_format,
    read_metas,
)
from ..ir import IRError, load_ir
from ..names import (
    ADAPTIVE_CONCURRENCY,
    CALL_TIMEOUT_S,
    MAX_IN_FLIGHT,
    OFFLOAD_THRESHOLD,
    RETRIES,
    ROW_ATTEMPTS,
    TRIALS,
)
from ..semantics.engine import Engine
from .cluster import Topology, connect, this_node_id
from .driver import Driver, DriverConfig
from .progress import RunProgress, print_summary
from .shards import run_shards
from .summary import RunSummary, build_summary


class RunError(Exception):
    """The run cannot start: unusable input, output or configuration (the message says why)."""


class RunStopped(RunError):
    """The run stopped before every row was written (its output cannot be written: a full disk);
    the rows written are in the output and the summary, and ``--resume`` finishes the run."""

    def __init__(self, reason: str, summary: RunSummary):
        fix = "free the space and re-run" if "cannot write" in reason else "re-run"
        super().__init__(f"stopped after {summary['rows']} rows: {reason}; {fix} with --resume to finish")
        self.summary = summary


@dataclass(slots=True)
class RunOptions:
    """Options of ``mxc run`` (see ``mxc run --help``)."""

    input: str
    output: str
    backend: str | None = None            # "sim": every model is simulated
    max_in_flight: int = MAX_IN_FLIGHT
    schedule: str = "row"                 # "row" | "batch"
    orchestrator: str = "p2p"             # "p2p" | "central"
    seed: int = 0
    resume: bool = False
    retry_errors: bool = False            # with resume: rows written with status error run again
    retried_errors: int = 0               # set by the run: error rows removed from the output to re-run
    overwrite: bool = False
    summary: str | None = None            # write the summary JSON here
    limit: int | None = None
    offload_threshold: int = OFFLOAD_THRESHOLD  # bytes; a negative value disables offloading (bench/offload_crossover.py)
    address: str | None = None
    replicas: dict[str, int] = field(default_factory=dict)
    progress: str = "auto"                # "auto" | "bar" | "plain" | "off"
    print_summary: bool = True
    coalesce: bool = True
    window_s: float = 0.002
    sim_actors: int = 2                   # at most this many sim service actors per model
    measure_bytes: bool = False           # count pickled bytes per hop (costs CPU)
    run_id: str | None = None             # names the run's actors (tests use it to find them)
    idle_scan_s: float = 5.0
    colocate: str = "auto"                # "auto" | "all" | "none": roles sharing agent actors
    adaptive_concurrency: bool = ADAPTIVE_CONCURRENCY  # AIMD limit of calls in flight per openai endpoint
    drivers: int = 1                      # driver shards admitting and tracking rows (control/shards.py)
    trials: int | None = None             # runs of each row (None: the program's limits.trials)
    until_ok: int | None = None           # stop at this many ok rows (None: the program's limits.until_ok)


def run(ir: dict | str | Path, opts: RunOptions) -> RunSummary:
    """Run the workflow over ``opts.input`` into ``opts.output``; returns the summary dict."""
    t_start = time.time()
    engine = preflight(ir, opts)
    source = _open_source(opts)
    out_path = str(Path(opts.output).resolve())
    journal = journal_path(out_path)
    _prepare_output(out_path, opts)
    _prepare_summary(opts)
    openai = _openai_models(engine)
    for spec in openai.values():
        spec.adaptive, spec.max_limit = opts.adaptive_concurrency, max(1, opts.max_in_flight)
    trials, until_ok = run_targets(engine, opts)
    try:
        total = source.count(opts.limit)
    except InputError as e:
        raise RunError(str(e)) from None
    total = None if total is None else total * trials
    try:
        started = connect(opts.address)
    except ConnectionError as e:
        raise RunError(f"{e}; start one with `ray start --head`, or leave out --address and RAY_ADDRESS "
                       "to run on a local Ray") from e
    cluster = {"address": ray.get_runtime_context().gcs_address, "started": started}
    actors: dict[str, Any] = {}
    shard_handles: list = []
    try:
        topo = _topology(engine, opts)
        actors = _launch(engine, topo, opts, out_path, openai, _vllm_models(engine))
        done, cut, ok_done = _get_restarting(actors["sink"].done_ids.remote, "the sink")
        done_ids = set(done)
        cfg = DriverConfig(max_in_flight=opts.max_in_flight, schedule=opts.schedule, limit=opts.limit,
                           coalesce=opts.coalesce, window_s=opts.window_s,
                           row_attempts=int(engine.limits.get("row_attempts", ROW_ATTEMPTS)),
                           idle_scan_s=opts.idle_scan_s, done_ids=done_ids, trials=trials,
                           until_ok=until_ok, ok_done=ok_done)
        with RunProgress(total, opts.progress) as prog:
            if opts.drivers > 1:
                here = NodeAffinitySchedulingStrategy(node_id=this_node_id(), soft=False)
                res = run_shards(engine, topo, source, cfg, opts.drivers, here, prog.update, shard_handles)
            else:
                driver = Driver(engine, topo, source, cfg, on_progress=prog.update)
                res = asyncio.run(driver.run())
        sink_stats = _get_restarting(actors["sink"].close.remote, "the sink")
        stats = _collect_stats(actors)
    finally:
        for h in [*shard_handles, *actors.values()]:
            ray.kill(h)
        if started:
            ray.shutdown()
    summary = build_summary(engine, opts, topo, res, stats, sink_stats, out_path, t_start, cut)
    summary["cluster"] = cluster
    summary["stopped"] = res.stopped or sink_stats.get("failure")
    summary.update(drivers=opts.drivers, trials=trials, until_ok=until_ok, ok_rows=ok_done + res.by_status.get("ok", 0),
                   ended=_ended(res, summary["stopped"], until_ok), input=source.spec, input_format=source.kind,
                   output_format=output_format(out_path))
    if journal != out_path:
        summary["journal"] = journal
        if summary["stopped"]:
            summary["output"] = journal        # the rows of this run are there until --resume finishes
        else:
            try:
                summary["output_rows"] = finalize(out_path)
            except OutputError as e:
                summary["stopped"], summary["output"] = str(e), journal
    if opts.summary:
        try:
            Path(opts.summary).write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        except OSError as e:
            raise RunError(f"the run completed ({summary['rows']} rows in {out_path!r}) but the summary "
                           f"{opts.summary!r} cannot be written: {e.strerror or e}") from e
    if opts.print_summary:
        print_summary(summary)
    if summary["stopped"]:
        raise RunStopped(summary["stopped"], summary)
    return summary


_MALFORMED = (KeyError, TypeError, AttributeError, IndexError, RecursionError, SyntaxError, MemoryError,
              OverflowError)


def preflight(ir: dict | str | Path, opts: RunOptions) -> Engine:
    """The workflow's engine, once the IR, the options and everything the run derives from them (actor
    counts, limits) are known to be usable; RunError otherwise, before any work starts. The IR may come
    from anywhere (``mxc run FILE.json``): whatever shape it has, a malformed one is a RunError."""
    try:
        ir = load_ir(ir)
        engine = Engine(ir, seed=opts.seed, backend=opts.backend)
        _check_options(engine, opts)
        _topology(engine, opts, namespace=None)
        for key in ("retries", "row_attempts"):
            int(engine.limits.get(key, 3))
        float(engine.limits.get("call_timeout_s", 120.0))
        float(engine.row_timeout_s)
        for name in {a.tool for a in engine.agents.values() if a.kind == "tool"}:
            from ..sandbox.bwrap import Limits

            try:
                Limits.from_spec(engine.tools[name].sandbox_spec())
            except ValueError as e:
                raise RunError(f"unusable workflow: tool {name!r}: {e}") from e
    except RunError:
        raise
    except (IRError, ValueError) as e:
        raise RunError(f"unusable workflow: {e}") from e
    except _MALFORMED as e:
        raise RunError(f"unusable workflow: malformed IR ({type(e).__name__}: {e})") from e
    return engine


def _prepare_summary(opts: RunOptions) -> None:
    """Check that the summary file can be written before the run starts (its folder is created)."""
    if not opts.summary:
        return
    p = Path(opts.summary)
    if p.is_dir():
        raise RunError(f"--summary {opts.summary!r} is a directory")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        _probe_writable(p)
    except OSError as e:
        raise RunError(f"--summary {opts.summary!r} cannot be written: {e.strerror or e}") from e


def _probe_writable(p: Path) -> None:
    """OSError unless ``p`` can be opened for writing; nothing is written, and a file this creates is
    removed again."""
    existed = p.exists()
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.close(fd)
    if not existed:
        p.unlink()


def _check_options(engine: Engine, opts: RunOptions) -> None:
    if opts.schedule not in ("row", "batch"):
        raise RunError(f"--schedule must be row or batch, got {opts.schedule!r}")
    if opts.orchestrator not in ("p2p", "central"):
        raise RunError(f"--orchestrator must be p2p or central, got {opts.orchestrator!r}")
    if opts.retry_errors and not opts.resume:
        raise RunError("--retry-errors goes with --resume")
    if opts.colocate not in ("auto", "all", "none"):
        raise RunError(f"--colocate must be auto, all or none, got {opts.colocate!r}")
    if opts.max_in_flight < 1:
        raise RunError("--max-in-flight must be at least 1")
    if opts.drivers < 1:
        raise RunError("--drivers must be at least 1")
    if opts.drivers > 1 and opts.input == "-":
        raise RunError("--drivers reads the input in each driver: standard input (-) can be read only once")
    if opts.drivers > opts.max_in_flight:
        raise RunError(f"--drivers {opts.drivers} is more than --max-in-flight {opts.max_in_flight}: "
                       "each driver needs a row in flight")
    if opts.limit is not None and opts.limit < 0:
        raise RunError("--limit must be >= 0")
    for name, n in opts.replicas.items():
        if name not in engine.agents:
            raise RunError(f"--replicas {name}={n}: no agent {name!r} (agents: {', '.join(engine.agents)})")
        if n < 1:
            raise RunError(f"--replicas {name}={n}: must be at least 1")
    if opts.trials is not None and opts.trials < 1:
        raise RunError("--trials must be at least 1")
    if opts.until_ok is not None and opts.until_ok < 1:
        raise RunError("--until-ok must be at least 1")
    if any(a.kind == "tool" for a in engine.agents.values()):
        try:
            from ..actors import tool_service  # noqa: F401
        except ImportError as e:
            raise RunError(f"this workflow has tool agents but the tool service is unavailable: {e}") from e


def _open_source(opts: RunOptions) -> Source:
    try:
        return open_input(opts.input)
    except InputError as e:
        raise RunError(str(e)) from None


def run_targets(engine: Engine, opts: RunOptions) -> tuple[int, int | None]:
    """``(trials, until_ok)``: the options when given, else the program's ``limits``."""
    trials = opts.trials if opts.trials is not None else int(engine.limits.get("trials") or TRIALS)
    until_ok = opts.until_ok if opts.until_ok is not None else engine.limits.get("until_ok")
    if trials < 1 or (until_ok is not None and int(until_ok) < 1):
        raise RunError(f"unusable workflow: limits.trials = {trials}, limits.until_ok = {until_ok}")
    return trials, None if until_ok is None else int(until_ok)


def _ended(res: Any, stopped: str | None, until_ok: int | None) -> str:
    """Why admission ended, in words (the summary's ``ended``)."""
    if stopped:
        return f"stopped: {stopped}"
    if res.ended == "until_ok":
        return f"until_ok: {until_ok} rows with status ok are in the output; the rows in flight finished"
    return "input: every input row was admitted"


def _prepare_output(path: str, opts: RunOptions) -> None:
    p = Path(path)
    if p.is_dir():
        raise RunError(f"output {path!r} is a directory")
    fmt = output_format(path)
    if fmt != "jsonl":
        _prepare_final(path, opts)
        p = Path(journal_path(path))
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the output directory {str(p.parent)!r}: {e.strerror}") from e
    if opts.input != "-" and p.exists() and _same_file(opts.input, path):
        raise RunError(f"output {path!r} is the input file: write the output to another file")
    if p.exists() and not p.is_file():
        raise RunError(f"output {path!r} is not a regular file")
    if output_exists(path) and not (opts.resume or opts.overwrite):
        raise RunError(f"output {path!r} exists: pass --resume to skip the rows already in it, "
                       f"or --overwrite to replace it")
    try:
        _probe_writable(p)
    except OSError as e:
        raise RunError(f"output {path!r} cannot be written: {e.strerror or e}") from e
    if opts.retry_errors:
        try:
            opts.retried_errors = drop_status(path, "error")
        except OutputLocked:
            raise RunError(f"output {path!r} is being written by another run") from None
        except OutputError as e:
            raise RunError(f"{e}; --retry-errors cannot remove the error rows") from None
        except OSError as e:
            raise RunError(f"output {path!r} cannot be rewritten for --retry-errors: {e.strerror or e}") from e


def _prepare_final(path: str, opts: RunOptions) -> None:
    """Checks of a Parquet or compressed output (written from its journal at the end: outputs.py)."""
    p = Path(path)
    if p.exists() and not p.is_file():
        raise RunError(f"output {path!r} is not a regular file")
    if opts.input != "-" and p.exists() and _same_file(opts.input, path):
        raise RunError(f"output {path!r} is the input file: write the output to another file")
    if p.exists() and opts.resume:
        try:
            next(iter(read_metas(path)), None)
        except OutputError as e:
            raise RunError(f"{e}; --resume cannot read the rows already written") from None
    if opts.overwrite:
        p.unlink(missing_ok=True)


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (the same path, a symbolic or a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _topology(engine: Engine, opts: RunOptions, namespace: str | None | bool = True) -> Topology:
    roles = {name: int(opts.replicas.get(name, spec.replicas)) for name, spec in engine.agents.items()}
    # the in-cluster sim service hosts only the models that run on it (not openai/vllm services)
    models = sorted({spec.model for spec in engine.agents.values()
                     if spec.kind == "llm" and engine.model_backend(spec.model) == "sim"})
    reps = {m: engine.models[m].sim.replicas for m in models}
    n_sim = max(1, min(opts.sim_actors, max(reps.values(), default=1)))
    sims = {m: list(range(min(reps[m], n_sim))) for m in models}
    tools = {t: max(1, engine.tools[t].replicas)
             for t in sorted({s.tool for s in engine.agents.values() if s.kind == "tool"})}
    prefix = f"mx-{opts.run_id or uuid.uuid4().hex[:8]}"
    central = opts.orchestrator == "central"
    groups = [list(roles)] if len(roles) > 1 and not central and _colocate(engine, opts, roles) else []
    if groups:
        n = max(roles.values())
        roles = dict.fromkeys(roles, n)
    if namespace is True:
        namespace = ray.get_runtime_context().namespace
    return Topology(prefix, namespace, roles, sims, tools, central=central, groups=groups)


def _colocate(engine: Engine, opts: RunOptions, roles: dict[str, int]) -> bool:
    """Whether every role runs in the same agent actors. ``auto``: when no model runs in the cluster
    (every LLM agent calls an ``openai`` or ``vllm`` service, where a hop between actors costs more CPU
    than the step) and every role has the same replicas."""
    if opts.colocate != "auto":
        return opts.colocate == "all"
    external = all(engine.model_backend(s.model) in ("openai", "vllm")
                   for s in engine.agents.values() if s.kind == "llm")
    return opts.backend != "sim" and external and len(set(roles.values())) == 1


def _launch(engine: Engine, topo: Topology, opts: RunOptions, out_path: str, openai: dict,
            vllm: dict) -> dict[str, Any]:
    """Start the run's actors and wait until every one answers."""
    actors: dict[str, Any] = {}
    mode = "append" if opts.resume else "new"
    here = NodeAffinitySchedulingStrategy(node_id=this_node_id(), soft=False)
    journal = journal_path(out_path)
    prior = out_path if journal != out_path else None
    actors["sink"] = Sink.options(name=topo.sink, scheduling_strategy=here).remote(journal, mode, topo,
                                                                                    prior=prior)
    hosted: dict[int, dict[str, tuple[dict, int]]] = {}
    for model, ids in topo.sims.items():
        sim = engine.ir["models"][model]["sim"]   # the sim service takes the IR's block as it is
        r, n = engine.models[model].sim.replicas, len(ids)
        for k, i in enumerate(ids):
            hosted.setdefault(i, {})[model] = (sim, r // n + (1 if k < r % n else 0))
    for i, models in sorted(hosted.items()):
        actors[topo.sim(i)] = SimService.options(name=topo.sim(i), scheduling_strategy="SPREAD").remote(
            models, topo, opts.coalesce)
    if topo.tools:
        from ..actors.tool_service import ToolService

        for tool, n in topo.tools.items():
            for i in range(n):
                actors[topo.tool(tool, i)] = ToolService.options(
                    name=topo.tool(tool, i), scheduling_strategy="SPREAD").remote()
    cfg = AgentConfig(ir=engine.ir, openai=openai, vllm=vllm, topo=topo, seed=opts.seed, backend=opts.backend,
                      offload_threshold=opts.offload_threshold, coalesce=opts.coalesce, window_s=opts.window_s,
                      measure_bytes=opts.measure_bytes,
                      call_retries=int(engine.limits.get("retries", RETRIES)),
                      call_timeout_s=float(engine.limits.get("call_timeout_s", CALL_TIMEOUT_S)))
    for roles, n in topo.hosts():
        for i in range(n):
            name = topo.agent(roles[0], i)
            actors[name] = AgentActor.options(
                name=name, max_concurrency=10000, max_restarts=10,
                scheduling_strategy="SPREAD").remote(roles, i, cfg)
    if topo.central:
        actors["coordinator"] = Coordinator.options(name=topo.coordinator).remote(
            topo, opts.coalesce, opts.window_s)
    try:
        deadline = time.monotonic() + 120
        for name, h in actors.items():
            _get_restarting(h.ping.remote, name, max(1.0, deadline - time.monotonic()))
    except Exception as e:
        for h in actors.values():
            ray.kill(h)
        if "OutputLocked" in str(e):
            raise RunError(f"output {out_path!r} is being written by another run") from None
        if "OutputError" in str(e):
            raise RunError(f"output {out_path!r} cannot be read to resume: {e}") from None
        raise
    return actors


def _get_restarting(call: Any, what: str, limit_s: float = 120.0) -> Any:
    """``ray.get(call())``, called again while its actor restarts (the sink, sim and tool services restart
    without limit, agents up to ten times: one killed while the run starts or ends must not end it).
    An actor that failed in its constructor (``OutputLocked``) is not waited for."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return ray.get(call(), timeout=max(1.0, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError as e:
            raise RunError(f"{what} did not answer within {limit_s:g} s") from e
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError) as e:
            if "OutputLocked" in str(e):
                raise
            if time.monotonic() > deadline:
                raise RunError(f"{what} did not come back within {limit_s:g} s after it died: {e}") from e
            time.sleep(0.5)


def _openai_models(engine: Engine) -> dict:
    """The ``openai`` models the agents call, resolved here (URLs and keys from this environment)."""
    used = {s.model for s in engine.agents.values() if s.kind == "llm" and engine.model_backend(s.model) == "openai"}
    if not used:
        return {}
    from ..backends.openai_client import resolve_models

    try:
        return {m: spec for m, spec in resolve_models(engine.ir).items() if m in used}
    except ValueError as e:
        raise RunError(f"unusable model configuration: {e}") from e


def _vllm_models(engine: Engine) -> dict:
    """The ``vllm`` models the agents call: their Serve applications must be running (``mxc serve``)."""
    used = [s.model for s in engine.agents.values() if s.kind == "llm" and engine.model_backend(s.model) == "vllm"]
    if not used:
        return {}
    from ..backends.serve_deploy import ServeDeployError, resolve_models

    try:
        return resolve_models(engine.ir, sorted(set(used)))
    except ServeDeployError as e:
        raise RunError(str(e)) from e


def _collect_stats(actors: dict[str, Any]) -> dict[str, Any]:
    refs = {k: h.stats.remote() for k, h in actors.items() if k != "sink"}
    out = {}
    for k, ref in refs.items():
        try:
            out[k] = ray.get(ref, timeout=30)
        except Exception as e:  # noqa: BLE001 - a dead actor: its stats are gone
            out[k] = {"error": str(e)}
    return out


