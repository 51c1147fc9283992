"""backend = "vllm" without vLLM: the deployment plan (replicas, autoscaling, tensor/pipeline-parallel
placement groups, engine arguments), sampling-parameter mapping, `mxc serve` usage errors, and `mxc run`
refusing a vllm model that is not deployed. The engine itself is exercised in test_vllm.py (slow)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
from matrixlang.runtime.backends import serve_deploy as sd
from matrixlang.runtime.backends.vllm_serve import cpu_binding, sampling_kwargs

from matrixlang.checker import check
from matrixlang.compiler import build_ir
from matrixlang.source import Source

PROGRAM = '''
workflow serve_plan "a vllm model and an openai one"
input { id: str  q: str }
model big {
  backend = "vllm"
  name = "org/Model-7B"
  replicas = 3
  max_concurrency = 64
  max_model_len = 4096
  dtype = "bfloat16"
  max_tokens = 32
  timeout = 20s
  retries = 2
}
model small { backend = "openai"  name = "m"  url = "http://127.0.0.1:9/v1" }
agent a { model = big  system = "{{ row.q }}" }
agent b { model = small  system = "{{ a.text }}" }
flow { start -> a  a -> b  b -> end }
output { id = row.id  text = b.text }
'''


def compile_ir(text: str) -> dict:
    an = check(Source("plan.mx", text))
    assert not an.diags.has_errors, [d.message for d in an.diags.sorted()]
    return build_ir(an)


@pytest.fixture(scope="module")
def ir() -> dict:
    return compile_ir(PROGRAM)


def test_models_and_app_names(ir):
    assert sd.vllm_models(ir) == ["big"]
    assert sd.app_name(ir, "big") == "mx-serve_plan-big"
    odd = {"workflow": {"name": "a b#c"}}
    assert sd.app_name(odd, "m/1") == "mx-a_b_c-m_1"


def test_plan_replicas_on_cpu(ir):
    p = sd.plan(ir, "big", gpus=False, environ={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_TOKEN": "x", "PATH": "/bin"})
    assert p["app"] == "mx-serve_plan-big"
    d = p["deployment"]
    assert d["num_replicas"] == 3 and "autoscaling_config" not in d
    assert d["max_ongoing_requests"] == 64
    assert d["ray_actor_options"] == {"num_cpus": 1}
    assert "placement_group_bundles" not in d
    assert p["engine"] == {"model": "org/Model-7B", "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
                           "max_model_len": 4096, "dtype": "bfloat16"}
    assert p["env"] == {"VLLM_CPU_KVCACHE_SPACE": "1"}      # only VLLM_*: no tokens, no PATH
    assert p["cpu"] == {"cpus_per_worker": 1, "workers": 1}  # the replica pins its worker to a core


def test_plan_cpus_per_worker_and_binding(ir):
    p = sd.plan(ir, "big", gpus=False, cpus_per_worker=4, environ={})
    assert p["deployment"]["ray_actor_options"] == {"num_cpus": 4} and p["cpu"]["cpus_per_worker"] == 4
    assert sd.plan(ir, "big", gpus=False, environ={"VLLM_CPU_OMP_THREADS_BIND": "0-3"})["cpu"] is None
    assert sd.plan(ir, "big", gpus=True, environ={})["cpu"] is None
    assert [cpu_binding([0, 1], r, 1, 1) for r in range(3)] == ["0", "1", "0"]   # replicas of a node
    assert cpu_binding(list(range(8)), 1, 2, 2) == "4,5|6,7"                    # 2 workers of 2 cores
    assert cpu_binding([2, 3, 5], 0, 2, 2) == "2,3|5,2"                         # wraps around


def test_plan_gpu_single_worker_and_engine_overrides(ir):
    p = sd.plan(ir, "big", gpus=True, engine_args={"enforce_eager": True, "dtype": "float16"}, environ={})
    assert p["deployment"]["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1}
    assert p["engine"]["enforce_eager"] is True and p["engine"]["dtype"] == "float16"
    assert "distributed_executor_backend" not in p["engine"]


@pytest.mark.parametrize("gpus", [True, False])
def test_plan_tensor_and_pipeline_parallel_bundles(ir, gpus):
    ir = copy.deepcopy(ir)
    ir["models"]["big"].update(tensor_parallel=4, pipeline_parallel=2)
    p = sd.plan(ir, "big", gpus=gpus, environ={})
    d, e = p["deployment"], p["engine"]
    assert e["tensor_parallel_size"] == 4 and e["pipeline_parallel_size"] == 2
    bundles = d["placement_group_bundles"]
    assert len(bundles) == 8
    assert d["ray_actor_options"] == {"num_cpus": 1}
    first = bundles[0]
    need = {"CPU": d["ray_actor_options"].get("num_cpus", 0), "GPU": d["ray_actor_options"].get("num_gpus", 0)}
    assert all(first.get(k, 0) >= v for k, v in need.items())   # the replica actor fits in bundle 0
    if gpus:
        assert sum(b.get("GPU", 0) for b in bundles) == 8 and e["distributed_executor_backend"] == "ray"
        assert d["placement_group_strategy"] == "PACK"
    else:
        assert all(b == {"CPU": 1} for b in bundles) and e["distributed_executor_backend"] == "mp"
        assert p["cpu"] == {"cpus_per_worker": 1, "workers": 8}
        assert d["placement_group_strategy"] == "STRICT_PACK"


def test_plan_autoscaling():
    ir = compile_ir(PROGRAM.replace("replicas = 3", "min_replicas = 2\n  max_replicas = 5\n  target_ongoing_requests = 8"))
    d = sd.plan(ir, "big", gpus=False, environ={})["deployment"]
    assert "num_replicas" not in d
    assert d["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 5, "initial_replicas": 2,
                                       "target_ongoing_requests": 8.0}


def test_plan_refuses_other_backends(ir):
    with pytest.raises(ValueError, match="not 'vllm'"):
        sd.plan(ir, "small", gpus=False)


def test_resolve_models_uses_model_timeouts(ir):
    spec = sd.resolve_models(ir, check=False)["big"]
    assert (spec.app, spec.timeout_s, spec.retries) == ("mx-serve_plan-big", 20.0, 2)


def test_sampling_kwargs():
    allowed = frozenset({"max_tokens", "temperature", "stop", "seed", "top_p"})
    assert sampling_kwargs({"max_completion_tokens": 5, "stop": "\n", "stream": True, "temperature": None},
                           allowed) == {"max_tokens": 5, "stop": ["\n"]}
    assert sampling_kwargs({"n": 1, "seed": 3}, allowed | {"n"}) == {"n": 1, "seed": 3}
    with pytest.raises(ValueError, match="unknown sampling parameters for vLLM: frobnicate, logit_boost"):
        sampling_kwargs({"frobnicate": 1, "logit_boost": 2, "top_p": 0.5}, allowed)
    with pytest.raises(ValueError, match="one reply per call"):
        sampling_kwargs({"n": 2}, allowed | {"n"})


def mxc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matrixlang", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_usage_errors(tmp_path):
    no_vllm = tmp_path / "plain.mx"
    no_vllm.write_text(PROGRAM.replace("workflow serve_plan", "workflow plain")
                       .replace('backend = "vllm"', 'backend = "sim"').replace("max_model_len = 4096", "")
                       .replace('dtype = "bfloat16"', ""))
    r = mxc("serve", str(no_vllm), "--status")
    assert r.returncode == 2 and 'no model with backend "vllm"' in r.stderr
    prog = tmp_path / "p.mx"
    prog.write_text(PROGRAM)
    r = mxc("serve", str(prog), "--engine-arg", "no_equals_sign")
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr
    r = mxc("serve", str(prog), "--model", "small")
    assert r.returncode == 2 and "not a vllm model" in r.stderr and "big" in r.stderr
    r = mxc("serve", str(prog), "--status", "--address", "127.0.0.1:1")      # nothing listens on port 1
    assert r.returncode == 2 and "no Ray cluster" in r.stderr and "ray start --head" in r.stderr
    broken = tmp_path / "broken.mx"
    broken.write_text("workflow w\nmodel m {")
    assert mxc("serve", str(broken)).returncode == 1


@pytest.mark.ray
def test_run_refuses_a_vllm_model_that_is_not_deployed(ray_local, ir, tmp_path):
    from matrixlang.runtime.control.run import RunError, RunOptions, run

    rows = tmp_path / "in.jsonl"
    rows.write_text('{"id": "r0", "q": "x"}\n')
    ir = copy.deepcopy(ir)
    ir["workflow"]["name"] = "never_served_anywhere"
    with pytest.raises(RunError, match=r"not running on this cluster: big \(mx-never_served_anywhere-big: "
                                       r"not_deployed\); deploy with `mxc serve"):
        run(ir, RunOptions(input=str(rows), output=str(tmp_path / "out.jsonl"), progress="off",
                           print_summary=False))
    assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").stat().st_size == 0


@pytest.mark.ray
def test_status_after_another_process_shut_serve_down(ray_local, ir):
    """This process caches Serve's controller; `mxc serve --shutdown` elsewhere kills it: the next
    status call must find the new state (nothing deployed), not fail on the dead handle."""
    import ray

    sd.start_serve()
    assert sd.status(ir)[0]["status"] == "NOT_DEPLOYED"        # caches the controller client
    address = ray.get_runtime_context().gcs_address
    code = f"import ray; from ray import serve; ray.init(address={address!r}, logging_level='ERROR'); serve.shutdown()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sd.status(ir) == [{"model": "big", "app": "mx-serve_plan-big", "status": "NOT_DEPLOYED",
                              "replicas": {}, "message": ""}]


def test_only_the_vllm_adapter_imports_vllm():
    """vLLM is an optional extra: no other module may import it, and the run path must not load it."""
    import ast
    from pathlib import Path

    import matrixlang.grammar
    import matrixlang.runtime

    import matrixlang

    importers = set()
    for mod in (matrixlang, matrixlang.runtime, matrixlang.grammar):   # installed apart in a checkout
        pkg = Path(mod.__file__).parent
        for path in pkg.glob("**/*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "vllm" or n.startswith("vllm.") for n in names):
                    importers.add(f"{mod.__name__}:{path.relative_to(pkg).as_posix()}")
    assert importers == {"matrixlang.runtime:backends/vllm_serve.py"}
    code = ("import sys, matrixlang.cli, matrixlang.runtime.control.run, matrixlang.runtime.backends.serve_deploy, "
            "matrixlang.runtime.actors.agent; print(sorted(m for m in sys.modules if m.split('.')[0] == 'vllm'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
