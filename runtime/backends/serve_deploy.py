"""``backend = "vllm"``: deploy, inspect and remove the Ray Serve applications of a workflow's vLLM models,
and the agent-side client that calls them through Serve handles. Nothing here imports vLLM (the replicas
do, in ``vllm_serve``), so the driver and the agents need only Ray.

One Serve application per ``vllm`` model, named ``app_name(ir, model)`` (``mx-<workflow>-<model>``):

- ``replicas`` engine replicas, or Serve autoscaling between ``min_replicas`` and ``max_replicas`` with
  ``target_ongoing_requests`` when the model has ``autoscale``; at most ``max_concurrency`` requests in
  flight per replica.
- ``tensor_parallel × pipeline_parallel`` workers per replica as one placement group per replica: on a
  cluster with GPUs, one GPU per bundle (the first bundle also holds the replica actor's CPU) and vLLM's
  ``ray`` executor; without GPUs, one bundle of ``cpus_per_worker`` CPUs per worker, packed on one node,
  and vLLM's ``mp`` executor. A single-worker replica needs no placement group: it asks for one GPU (or
  ``cpus_per_worker`` CPUs). On CPUs each replica pins its engine workers to cores of its own
  (``vllm_serve.cpu_binding``; vLLM's default would put every replica of a node on the same cores)
  unless ``VLLM_CPU_OMP_THREADS_BIND`` is given.
- ``engine_args`` of the IR (``max_model_len``, ``dtype``, ...) plus any given at deploy time are passed
  to ``AsyncEngineArgs``; ``name`` is the model (a Hugging Face id or a local directory).
- Serve calls the replica's ``check_health`` every 10 s and replaces a replica whose engine died.
- ``VLLM_*`` variables of the deploying process's environment are set in the replicas (for example
  ``VLLM_CPU_KVCACHE_SPACE``).

Agents call ``ServeClient.call(LLMCall)`` (the messages may carry the ``token_ids`` of earlier replies
of the model, which the replica splices into the prompt; the reply brings its own, see ``vllm_serve``): the request goes through a Serve handle (Serve routes it to
the replica with the fewest requests of two sampled, power of two choices); failures of the replica or
of Serve are retried with backoff, a request vLLM refuses (prompt longer than ``max_model_len``, a bad
sampling parameter) fails at once with the reason (``openai_client.ModelCallError``).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from ..irtypes import ModelSpec, parse_models
from ..names import CALL_TIMEOUT_S, RETRIES
from ..semantics.engine import LLMCall, Reply
from .stats import CallStats

DEPLOYMENT = "VLLMServer"
HEALTH_CHECK_PERIOD_S = 10.0
HEALTH_CHECK_TIMEOUT_S = 60.0


class ServeDeployError(Exception):
    """A vLLM application could not be deployed, or is not deployed when a run needs it."""


# ---- the plan: pure functions of the IR ------------------------------------------------------------

def vllm_models(ir: dict) -> list[str]:
    """The IR's ``backend = "vllm"`` models, sorted."""
    return sorted(m for m, spec in parse_models(ir).items() if spec.backend == "vllm")


def _model(ir: dict, model: str) -> ModelSpec:
    """The IR's model ``model``, parsed (IRError when malformed)."""
    return ModelSpec.from_ir(model, ir["models"][model])


def app_name(ir: dict, model: str) -> str:
    """The Serve application of a model: ``mx-<workflow>-<model>`` (characters Serve dislikes become _)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"mx-{ir['workflow']['name']}-{model}")


def replica_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The ``VLLM_*`` variables forwarded to replicas."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in sorted(env.items()) if k.startswith("VLLM_")}


def plan(ir: dict, model: str, *, gpus: bool, engine_args: dict | None = None,
         environ: dict[str, str] | None = None, cpus_per_worker: int = 1) -> dict:
    """Everything needed to deploy one model: ``{app, deployment: Serve options, engine: engine kwargs,
    env, cpu: binding request or None}``. ``gpus``: whether the cluster has GPUs (bundles of GPUs, else
    of ``cpus_per_worker`` CPUs per engine worker, and each replica pins its workers to its own cores)."""
    m = _model(ir, model)
    if m.backend != "vllm":
        raise ValueError(f"model {model!r} has backend {m.backend!r}, not 'vllm'")
    if not m.name:
        raise ValueError(f"model {model!r}: no name (the model id or directory vLLM loads)")
    tp, pp = m.tensor_parallel, m.pipeline_parallel
    workers = tp * pp
    engine: dict[str, Any] = {"model": m.name, "tensor_parallel_size": tp, "pipeline_parallel_size": pp,
                              **m.engine_args, **(engine_args or {})}
    opts: dict[str, Any] = {
        "name": DEPLOYMENT,
        "max_ongoing_requests": m.max_concurrency,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        "graceful_shutdown_timeout_s": 30.0,
        "max_constructor_retry_count": 2,
    }
    auto = m.autoscale
    if auto is not None:
        lo, hi = auto.min_replicas, auto.max_replicas
        opts["autoscaling_config"] = {
            "min_replicas": lo, "max_replicas": hi, "initial_replicas": max(lo, min(m.replicas, hi)),
            "target_ongoing_requests": auto.target_ongoing_requests}
    else:
        opts["num_replicas"] = m.replicas
    c = max(1, int(cpus_per_worker))
    if workers == 1:
        opts["ray_actor_options"] = {"num_cpus": 1, "num_gpus": 1} if gpus else {"num_cpus": c}
    elif gpus:
        engine.setdefault("distributed_executor_backend", "ray")
        opts["ray_actor_options"] = {"num_cpus": 1}
        opts["placement_group_bundles"] = [{"CPU": 1, "GPU": 1}] + [{"GPU": 1}] * (workers - 1)
        opts["placement_group_strategy"] = "PACK"
    else:
        engine.setdefault("distributed_executor_backend", "mp")
        opts["ray_actor_options"] = {"num_cpus": c}
        opts["placement_group_bundles"] = [{"CPU": c}] * workers
        opts["placement_group_strategy"] = "STRICT_PACK"     # mp workers share one node
    env = replica_env(environ)
    cpu = None if gpus or "VLLM_CPU_OMP_THREADS_BIND" in env else {"cpus_per_worker": c, "workers": workers}
    return {"app": app_name(ir, model), "model": model, "deployment": opts, "engine": engine, "env": env,
            "cpu": cpu}


# ---- deploy / status / shutdown (need a Ray connection) ----------------------------------------------

def cluster_has_gpus() -> bool:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) > 0


def _serve():
    """``ray.serve``, with a cached controller handle dropped when that controller is gone (another
    process ran ``mxc serve --shutdown``), so the next call finds the current controller by name."""
    from ray import serve
    from ray.serve import context

    check = getattr(context, "_check_cached_client_alive", None)
    if check is not None:
        check()
    return serve


def start_serve() -> None:
    """Start Serve on the connected cluster without HTTP proxies (agents use handles), if not running."""
    serve = _serve()
    serve.start(proxy_location="Disabled")


def deploy(ir: dict, *, models: list[str] | None = None, engine_args: dict | None = None,
           gpus: bool | None = None, cpus_per_worker: int = 1, wait: bool = True, timeout_s: float = 900.0,
           progress: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Deploy (or update in place) one Serve application per vLLM model; returns ``{model: plan}``.
    With ``wait``, returns when every application is RUNNING; ServeDeployError when one fails or
    ``timeout_s`` passes (the message is Serve's, e.g. a constructor error or unschedulable replicas)."""
    from .vllm_serve import VLLMServer

    serve = _serve()
    names = vllm_models(ir) if models is None else models
    if not names:
        raise ServeDeployError(f"workflow {ir['workflow']['name']!r} has no model with backend \"vllm\"")
    gpus = cluster_has_gpus() if gpus is None else gpus
    start_serve()
    plans = {m: plan(ir, m, gpus=gpus, engine_args=engine_args, cpus_per_worker=cpus_per_worker) for m in names}
    for m, p in plans.items():
        app = serve.deployment(VLLMServer).options(**p["deployment"]).bind(m, p["engine"], p["env"], p["cpu"])
        if progress:
            n = p["deployment"].get("num_replicas") or p["deployment"]["autoscaling_config"]["initial_replicas"]
            progress(f"deploying {p['app']}: {n} replica{'s' * (n != 1)} of {p['engine']['model']}")
        submit = getattr(serve, "_run", None)     # returns at once; serve.run waits without a timeout
        if submit is not None:
            submit(app, name=p["app"], route_prefix=None, _blocking=False)
        else:   # pragma: no cover - a Ray without serve._run
            serve.run(app, name=p["app"], route_prefix=None)
    if wait:
        wait_running([p["app"] for p in plans.values()], timeout_s, progress)
    return plans


def wait_running(apps: list[str], timeout_s: float, progress: Callable[[str], None] | None = None) -> None:
    """Block until every app is RUNNING; ServeDeployError on DEPLOY_FAILED or after ``timeout_s``."""
    serve = _serve()
    deadline = time.monotonic() + timeout_s
    last: dict[str, str] = {}
    t0 = time.monotonic()
    while True:
        st = serve.status().applications
        pending = []
        for a in apps:
            s = st.get(a)
            state = s.status.value if s is not None else "NOT_STARTED"
            if state == "DEPLOY_FAILED":
                raise ServeDeployError(f"{a}: deploy failed: {_app_message(s)}")
            if state != "RUNNING":
                pending.append(a)
                if progress and last.get(a) != state:
                    progress(f"{a}: {state.lower()} ({time.monotonic() - t0:.0f}s)")
            last[a] = state
        if not pending:
            if progress:
                progress(f"running ({time.monotonic() - t0:.0f}s): {', '.join(apps)}")
            return
        if time.monotonic() > deadline:
            msgs = "; ".join(f"{a}: {last[a]}: {_app_message(st.get(a))}" for a in pending)
            raise ServeDeployError(f"not running after {timeout_s:g}s: {msgs}")
        time.sleep(1.0)


def _app_message(s: Any) -> str:
    if s is None:
        return "not deployed"
    parts = [_brief(s.message)] if s.message else []
    for d in s.deployments.values():
        if d.message:
            parts.append(_brief(d.message))
    return " | ".join(parts) or "(no message)"


_EXC_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit)): \S")


def _brief(text: str) -> str:
    """A Serve status message without its tracebacks: the first line and the exceptions raised."""
    lines = text.strip().splitlines()
    if len(lines) <= 2:
        return text.strip()
    excs: list[str] = []
    for ln in lines[1:]:
        if _EXC_LINE.match(ln) and "Traceback (most recent" not in ln and ln.strip() not in excs:
            excs.append(ln.strip())
    return " ".join([lines[0].strip(), *(e[:400] for e in excs[-2:])])


def status(ir: dict) -> list[dict]:
    """One entry per vLLM model: ``{model, app, status, replicas: {state: n}, message}``; status
    ``NOT_DEPLOYED`` for an application Serve does not know."""
    serve = _serve()
    apps = serve.status().applications
    out = []
    for m in vllm_models(ir):
        a = app_name(ir, m)
        s = apps.get(a)
        if s is None:
            out.append({"model": m, "app": a, "status": "NOT_DEPLOYED", "replicas": {}, "message": ""})
            continue
        reps: dict[str, int] = {}
        for d in s.deployments.values():
            for state, n in d.replica_states.items():
                key = getattr(state, "value", str(state))
                reps[key] = reps.get(key, 0) + int(n)
        out.append({"model": m, "app": a, "status": s.status.value, "replicas": reps,
                    "message": _app_message(s) if s.status.value != "RUNNING" else ""})
    return out


def shutdown(ir: dict) -> list[str]:
    """Delete the workflow's vLLM applications (blocks until their replicas are gone); Serve itself stops
    when no application is left. Returns the deleted application names."""
    serve = _serve()
    known = serve.status().applications
    gone = [app_name(ir, m) for m in vllm_models(ir) if app_name(ir, m) in known]
    for a in gone:
        serve.delete(a, _blocking=True)
    if gone and not serve.status().applications:
        serve.shutdown()
    return gone


def replica_infos(ir: dict, model: str, *, probes: int = 64, timeout_s: float = 30.0) -> dict[str, dict]:
    """``info()`` of the model's replicas, found by sending up to ``probes`` info requests through the
    handle (Serve spreads them); ``{replica id: info}``."""
    serve = _serve()
    handle = serve.get_deployment_handle(DEPLOYMENT, app_name(ir, model))
    want = next((s["replicas"].get("RUNNING", 0) for s in status(ir) if s["model"] == model), 0)
    seen: dict[str, dict] = {}
    for _ in range(probes):
        info = handle.info.remote().result(timeout_s=timeout_s)
        seen[info["replica"]] = info
        if len(seen) >= want:
            break
    return seen


# ---- the agent-side client -------------------------------------------------------------------------

@dataclass(slots=True)
class VLLMModel:
    """One IR model with ``backend = "vllm"``, resolved for calling (picklable)."""

    model: str                     # the IR's models key
    app: str                       # its Serve application
    timeout_s: float = CALL_TIMEOUT_S
    retries: int = RETRIES
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0


def resolve_models(ir: dict, models: list[str] | None = None, *, check: bool = True) -> dict[str, VLLMModel]:
    """The IR's vLLM models (or those of ``models``), resolved; with ``check`` (needs Ray),
    ServeDeployError unless each one's application is RUNNING (the message says how to deploy it)."""
    limits = ir.get("limits", {})
    out = {}
    for m in vllm_models(ir) if models is None else sorted(models):
        spec = _model(ir, m)
        t, r = spec.timeout_s, spec.retries
        out[m] = VLLMModel(m, app_name(ir, m),
                           timeout_s=t if t is not None else float(limits.get("call_timeout_s", CALL_TIMEOUT_S)),
                           retries=r if r is not None else int(limits.get("retries", RETRIES)))
    if check and out:
        bad = [s for s in status(ir) if s["model"] in out and s["status"] != "RUNNING"]
        if bad:
            what = ", ".join(f"{s['model']} ({s['app']}: {s['status'].lower()})" for s in bad)
            raise ServeDeployError(f"vLLM model{'s' * (len(bad) > 1)} not running on this cluster: {what}; "
                                   f"deploy with `mxc serve FILE.mx` (same --address) first")
    return out


@dataclass(slots=True)
class ServeStats(CallStats):
    """Counters of one ServeClient: those of every client, and the calls each replica answered."""

    by_replica: dict[str, int] = field(default_factory=dict)


class ServeClient:
    """Calls one vLLM model's Serve application (see the module docstring)."""

    def __init__(self, spec: VLLMModel, *, rng: random.Random | None = None) -> None:
        self.spec = spec
        self.rng = rng or random.Random()
        self.stats = ServeStats()
        self._handle: Any = None

    def __repr__(self) -> str:
        return f"ServeClient(model={self.spec.model!r}, app={self.spec.app!r})"

    def handle(self) -> Any:
        if self._handle is None:
            self._handle = _serve().get_deployment_handle(DEPLOYMENT, self.spec.app)
        return self._handle

    async def call(self, call: LLMCall, key: Hashable | None = None) -> Reply:
        """The reply to an agent's LLMCall; ModelCallError after the last retry or on a refused request."""
        from ray.exceptions import RayActorError, RayTaskError
        from ray.serve.exceptions import RayServeException

        from .openai_client import ModelCallError

        st = self.stats
        st.calls += 1
        req = {"messages": call.messages, "params": call.params, "request_id": f"{call.agent}-{key}"}
        attempts = self.spec.retries + 1
        last = "no attempt"
        for attempt in range(attempts):
            st.attempts += 1
            resp = None
            try:
                resp = self.handle().chat.remote(req)
                out = await asyncio.wait_for(resp, self.spec.timeout_s)
            except asyncio.TimeoutError:
                if resp is not None:
                    resp.cancel()
                last, kind = f"timeout: no reply within {self.spec.timeout_s:g}s", "timeout"
            except (RayActorError, RayTaskError, RayServeException) as e:
                last, kind = f"{type(e).__name__}: {_first_line(e)}", type(e).__name__
            else:
                if "error" in out:
                    st.failed += 1
                    st.errors["refused"] = st.errors.get("refused", 0) + 1
                    raise ModelCallError(self.spec.model, f"refused by vLLM: {out['error']}", attempt + 1, False)
                st.ok += 1
                rep = str(out.get("replica"))
                st.by_replica[rep] = st.by_replica.get(rep, 0) + 1
                return Reply(out["text"], int(out["prompt_tokens"]), int(out["completion_tokens"]),
                             token_ids=out.get("token_ids"), tokenizer=out.get("tokenizer"))
            st.errors[kind] = st.errors.get(kind, 0) + 1
            if attempt + 1 < attempts:
                st.retries += 1
                cap = min(self.spec.max_backoff_s, self.spec.backoff_s * (2 ** attempt))
                await asyncio.sleep(cap / 2 + self.rng.uniform(0, cap / 2))
        st.failed += 1
        raise ModelCallError(self.spec.model, f"{attempts} attempt{'s' * (attempts != 1)} failed "
                             f"(Serve app {self.spec.app}); last: {last}", attempts, True)

    def snapshot(self) -> dict:
        """Counters, safe to log."""
        return {"app": self.spec.app, **self.stats.as_dict()}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1][:300] if text else type(e).__name__
