"""backend = "vllm" for real, on CPU (vllm-cpu): a tiny random-weight Llama made at test time, served
(1) by `mxc serve` as a Ray Serve application with two engine replicas that the agents call through Serve
handles, and (2) by vLLM's own OpenAI-compatible server (`vllm serve`) used through the `openai` backend.

Replies are gibberish: the tests check structure, token accounting (the rows' usage against the
model's own tokenizer and against the replicas' counters), routing (both replicas serve) and failures
(a prompt longer than max_model_len ends its row as error, the others complete). One engine set at a
time: the Serve replicas are removed before `vllm serve` starts. Run with scripts/test_vllm.sh.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.util import find_spec, module_from_spec, spec_from_file_location
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.skipif(find_spec("vllm") is None, reason="vLLM is not installed (scripts/test_vllm.sh installs it)"),
]

ROOT = Path(__file__).resolve().parents[2]

MAX_MODEL_LEN = 256
ROWS = 12
LONG_ID = "too-long"
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}

MAX_TOKENS = {"writer": 24, "critic": 16}


def tiny_duo(name: str, backend: str) -> str:
    """bench/workloads/tiny_duo.mx with ``backend`` (the workflow scripts/bench_vllm.py measures), from
    bench/programs.py loaded by path: tests/test_bench_gpu.py puts another ``bench`` module on sys.path."""
    spec = spec_from_file_location("bench_programs", ROOT / "bench" / "programs.py")
    programs = module_from_spec(spec)
    spec.loader.exec_module(programs)
    return programs.tiny_duo(name, backend)


def mxc(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matrixlang", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def compile_file(path: Path) -> dict:
    r = mxc("compile", str(path))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def write_rows(path: Path) -> list[str]:
    ids = [f"r{i}" for i in range(ROWS)]
    with path.open("w") as f:
        for i in ids:
            f.write(json.dumps({"id": i, "topic": f"topic number {i}"}) + "\n")
        # a topic of ~2000 tokens: the writer's first prompt exceeds max_model_len
        f.write(json.dumps({"id": LONG_ID, "topic": " ".join(f"w{k}x" for k in range(700))}) + "\n")
    return [*ids, LONG_ID]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-llama")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_model.py"), str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["layers"] == 2 and (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    return out


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny))


def conversation(agent: str, topic: str, before: list[dict]) -> list[dict]:
    """The messages an agent sends (docs/ir.md): system, earlier steps, then its prompt."""
    system = f"Write about {topic}." if agent == "writer" else f"Criticise the text about {topic}."
    msgs = [{"role": "system", "content": system}]
    msgs += [{"role": "assistant" if e["agent"] == agent else "user", "content": e["text"]} for e in before]
    if agent == "writer":
        msgs.append({"role": "user", "content": before[-1]["text"] if before else "Begin."})
    return msgs


def expected_prompt_tokens(tok, row: dict, topic: str) -> dict[str, int]:
    """Per agent, the prompt tokens of all its calls, recomputed with the model's own tokenizer."""
    out = {"writer": 0, "critic": 0}
    hist = row["transcript"]
    for i, e in enumerate(hist):
        text = tok.apply_chat_template(conversation(e["agent"], topic, hist[:i]), tokenize=False,
                                       add_generation_prompt=True)
        out[e["agent"]] += len(tok.encode(text, add_special_tokens=False))
    return out


def check_rows(out_path: Path, ids: list[str], tok, topics: dict[str, str], exact_ids: bool = False) -> dict:
    """Every row written once; ok rows did 4 steps with exact prompt tokens and bounded completions;
    the long row is an error naming max_model_len. Returns totals. ``exact_ids``: the Serve path splices
    the replies' own ids into later prompts (docs/vllm.md "Token-exact histories"), which the rows'
    text cannot recount: prompt tokens are then checked against the replicas' counters only."""
    rows = [json.loads(x) for x in out_path.read_text().splitlines()]
    assert sorted(r["_meta"]["id"] for r in rows) == sorted(ids)
    totals = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for r in rows:
        meta = r["_meta"]
        if meta["id"] == LONG_ID:
            assert meta["status"] == "error" and meta["reason"] == "model_error", meta
            assert "max_model_len" in meta["detail"] or "maximum context length" in meta["detail"], meta["detail"]
            assert meta["steps"] == 0 and r["transcript"] == []
            continue
        assert meta["status"] == "ok", meta
        assert meta["steps"] == 4 and r["turns"] == 4
        assert [e["agent"] for e in r["transcript"]] == ["writer", "critic", "writer", "critic"]
        assert all(isinstance(e["text"], str) for e in r["transcript"])
        want = expected_prompt_tokens(tok, r, topics[meta["id"]])
        for agent, u in meta["usage"].items():
            assert u["calls"] == 2
            assert u["prompt_tokens"] == want[agent] or exact_ids and u["prompt_tokens"] > 0, (agent, u, want)
            assert 2 <= u["completion_tokens"] <= 2 * MAX_TOKENS[agent]
            totals["calls"] += u["calls"]
            totals["prompt_tokens"] += u["prompt_tokens"]
            totals["completion_tokens"] += u["completion_tokens"]
    return totals


def run_workflow(ir: dict, tmp: Path, run_id: str):
    from matrixlang.runtime.control.run import RunOptions, run

    inp = tmp / "in.jsonl"
    ids = write_rows(inp)
    topics = {json.loads(x)["id"]: json.loads(x)["topic"] for x in inp.read_text().splitlines()}
    out = tmp / "out.jsonl"
    t0 = time.monotonic()
    summary = run(ir, RunOptions(input=str(inp), output=str(out), progress="off", print_summary=False,
                                 run_id=run_id))
    return ids, topics, out, summary, time.monotonic() - t0


# ---- (1) Ray Serve deployment, agents through Serve handles ------------------------------------------

class TestServeDeployment:
    @pytest.fixture(scope="class")
    def served(self, ray_local, tiny, tmp_path_factory):
        import ray

        d = tmp_path_factory.mktemp("served")
        prog = d / "duo.mx"
        prog.write_text(tiny_duo("vllm_duo", f'''  backend = "vllm"
  name = "{tiny}"
  replicas = 2
  max_concurrency = 64
  max_model_len = {MAX_MODEL_LEN}
  dtype = "float32"'''))
        address = ray.get_runtime_context().gcs_address
        t0 = time.monotonic()
        r = mxc("serve", str(prog), "--address", address, "--engine-arg", "enforce_eager=true",
                "--timeout", "1200", timeout=1300, env=ENGINE_ENV)
        print(f"\nmxc serve: 2 replicas running after {time.monotonic() - t0:.0f}s")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "running" in r.stderr
        yield prog, compile_file(prog), address
        r = mxc("serve", str(prog), "--shutdown", "--address", address, timeout=300)
        assert r.returncode == 0 and "removed mx-vllm_duo-tiny" in r.stdout, r.stderr

    def test_status(self, served):
        prog, _, address = served
        r = mxc("serve", str(prog), "--status", "--json", "--address", address)
        assert r.returncode == 0, r.stderr
        (st,) = json.loads(r.stdout)
        assert st["app"] == "mx-vllm_duo-tiny" and st["status"] == "RUNNING"
        assert st["replicas"] == {"RUNNING": 2}
        r = mxc("serve", str(prog), "--status", "--address", address)
        assert r.returncode == 0 and r.stdout.strip() == "tiny: mx-vllm_duo-tiny RUNNING (2 running)"

    def test_workflow_through_serve_handles(self, served, tokenizer, tmp_path):
        from matrixlang.runtime.backends import serve_deploy as sd

        _, ir, _ = served
        before = sd.replica_infos(ir, "tiny")
        ids, topics, out, summary, wall = run_workflow(ir, tmp_path, "vllm-serve")
        totals = check_rows(out, ids, tokenizer, topics, exact_ids=True)
        assert summary["rows"] == ROWS + 1
        assert summary["by_status"] == {"ok": ROWS, "error": 1}
        assert summary["tokens"] == totals["completion_tokens"]
        assert summary["prompt_tokens"] == totals["prompt_tokens"]
        after = sd.replica_infos(ir, "tiny")
        assert len(after) == 2 and set(after) == set(before)
        delta = {k: sum(after[r][k] - before[r][k] for r in after)
                 for k in ("served", "rejected", "prompt_tokens", "completion_tokens", "spliced", "unspliced")}
        # the replicas served exactly the rows' calls, and counted the same tokens
        # every call with history (writer's second, both critic calls) spliced the earlier replies' ids
        assert delta == {"served": totals["calls"], "rejected": 1, "prompt_tokens": totals["prompt_tokens"],
                         "completion_tokens": totals["completion_tokens"], "spliced": 3 * ROWS, "unspliced": 0}
        # the replicas report their engines' prefix-cache counters (the hits need a whole cache block
        # shared with an earlier prompt at the same replica: none at this size on CPU, 128-token blocks)
        hits = sum(after[r]["prefix_cache"]["hits"] - before[r]["prefix_cache"]["hits"] for r in after)
        queries = sum(after[r]["prefix_cache"]["queries"] - before[r]["prefix_cache"]["queries"] for r in after)
        assert 0 <= hits < queries <= totals["prompt_tokens"], (hits, queries)
        # routing: both replicas took calls
        assert all(after[r]["served"] > before[r]["served"] for r in after), after
        assert all(info["max_model_len"] == MAX_MODEL_LEN for info in after.values())
        # each replica pinned its engine worker to cores of its own
        binds = [info["cpu_bind"] for info in after.values()]
        assert len(set(binds)) == min(2, len(os.sched_getaffinity(0))), binds
        print(f"\nServe handles: {totals['completion_tokens']} completion tokens in "
              f"{summary['elapsed_s']:.2f}s = {summary['tokens_per_s']:.0f} tokens/s "
              f"(run wall {wall:.1f}s; per replica {[after[r]['served'] - before[r]['served'] for r in after]})")


# ---- (2) vLLM's own OpenAI-compatible server through the openai backend --------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def vllm_server(tiny, tmp_path):
    port = free_port()
    log = (tmp_path / "vllm-serve.log").open("w")
    proc = subprocess.Popen(
        # `vllm serve`'s server; the `vllm` CLI of vllm-cpu 0.32 dies asking for the "vllm" distribution
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny), "--host", "127.0.0.1",
         "--port", str(port), "--served-model-name", "tiny", "--max-model-len", str(MAX_MODEL_LEN),
         "--dtype", "float32", "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENGINE_ENV}, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    t0 = time.monotonic()
    try:
        while True:
            assert proc.poll() is None, (tmp_path / "vllm-serve.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 900, "vllm serve did not start in 900 s"
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=5) as resp:
                    if json.loads(resp.read())["data"][0]["id"] == "tiny":
                        break
            except OSError:
                time.sleep(1)
        print(f"\nvllm serve: ready after {time.monotonic() - t0:.0f}s")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()


def test_vllm_serve_through_the_openai_backend(ray_local, vllm_server, tokenizer, tmp_path, monkeypatch):
    prog = tmp_path / "duo_http.mx"
    prog.write_text(tiny_duo("vllm_http", '''  backend = "openai"
  name = "tiny"
  url = env("TINY_VLLM_URL")'''))
    ir = compile_file(prog)
    monkeypatch.setenv("TINY_VLLM_URL", vllm_server)
    ids, topics, out, summary, wall = run_workflow(ir, tmp_path, "vllm-http")
    totals = check_rows(out, ids, tokenizer, topics)
    assert summary["by_status"] == {"ok": ROWS, "error": 1}
    assert summary["tokens"] == totals["completion_tokens"]
    assert summary["prompt_tokens"] == totals["prompt_tokens"]
    print(f"\nvllm serve + openai backend: {totals['completion_tokens']} completion tokens in "
          f"{summary['elapsed_s']:.2f}s = {summary['tokens_per_s']:.0f} tokens/s (run wall {wall:.1f}s)")


def test_render_prompt_with_and_without_a_chat_template(tokenizer):
    from matrixlang.runtime.backends.vllm_serve import render_prompt

    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_prompt(tokenizer, msgs) == "<|system|>\nS</s>\n<|user|>\nU</s>\n<|assistant|>\n"
    template = tokenizer.chat_template
    try:
        tokenizer.chat_template = None
        assert render_prompt(tokenizer, msgs) == "system: S\nuser: U\nassistant:"
    finally:
        tokenizer.chat_template = template


def test_a_deploy_that_cannot_start_is_reported(ray_local, tmp_path):
    """A model vLLM cannot load: `mxc serve` gives up with Serve's reason (exit 1), --status says
    DEPLOY_FAILED (exit 1), `mxc run` refuses the workflow, --shutdown removes the application."""
    import ray
    from matrixlang.runtime.control.run import RunError, RunOptions, run

    prog = tmp_path / "broken.mx"
    missing = tmp_path / "no-such-model"
    prog.write_text(tiny_duo("vllm_broken", f'''  backend = "vllm"
  name = "{missing}"
  max_model_len = {MAX_MODEL_LEN}'''))
    address = ray.get_runtime_context().gcs_address
    r = mxc("serve", str(prog), "--address", address, "--timeout", "900", timeout=1000, env=ENGINE_ENV)
    try:
        assert r.returncode == 1, r.stderr[-3000:]
        assert "mx-vllm_broken-tiny: deploy failed" in r.stderr and "no-such-model" in r.stderr
        assert "Traceback" not in r.stderr.split("deploy failed", 1)[1]       # the reason, not the stack
        st = mxc("serve", str(prog), "--status", "--json", "--address", address)
        assert st.returncode == 1 and json.loads(st.stdout)[0]["status"] == "DEPLOY_FAILED"
        inp = tmp_path / "in.jsonl"
        write_rows(inp)
        with pytest.raises(RunError, match=r"tiny \(mx-vllm_broken-tiny: deploy_failed\)"):
            run(compile_file(prog), RunOptions(input=str(inp), output=str(tmp_path / "out.jsonl"),
                                               progress="off", print_summary=False))
    finally:
        r = mxc("serve", str(prog), "--shutdown", "--address", address, timeout=300)
    assert r.returncode == 0 and "removed mx-vllm_broken-tiny" in r.stdout, r.stderr
