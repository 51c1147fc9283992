"""The GPU benchmark's pieces that need no GPU (bench/gpu/, docs/gpu.md): its program checks and carries
`ignore_eos`; the requests the replay rebuilds from a run's output are exactly those the runtime sent
(a sim server counts the same prompt and completion tokens for both); LangGraph's client does the
same work; the payload cut into parts is put back whole, a component as soon as its parts are there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "bench" / "gpu"
sys.path.insert(0, str(GPU))
import workload as wl  # noqa: E402


def test_program_checks_and_patches_ignore_eos(tmp_path):
    wl.main(["programs", str(tmp_path), "--model", "bench", "--vllm-model", "/models/x"])
    for b in ("openai", "vllm"):
        r = subprocess.run([sys.executable, "-m", "matrixlang", "check", "--strict", str(tmp_path / f"bench_{b}.mx")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        ir = json.loads((tmp_path / f"bench_{b}.json").read_text())
        assert ir["models"]["llm"]["params"]["ignore_eos"] is True
        assert ir["agents"]["teacher"]["params"] == {"max_tokens": wl.TEACHER_TOKENS}
    assert json.loads((tmp_path / "bench_vllm.json").read_text())["models"]["llm"]["backend"] == "vllm"


def test_rows_follow_the_length_distributions():
    rows = wl.make_rows(300, seed=1)
    assert rows == wl.make_rows(300, seed=1)
    assert {r["turns"] for r in rows} == set(wl.TURNS)
    words = [len(r["topic"].split()) for r in rows]
    assert wl.TOPIC_WORDS[0] <= min(words) and max(words) <= wl.TOPIC_WORDS[1]


@pytest.mark.ray
def test_replay_sends_what_the_run_sent(tmp_path):
    from matrixlang.runtime.backends.simserver import SimServerProcess

    wl.main(["programs", str(tmp_path), "--model", "bench"])
    rows = tmp_path / "rows.jsonl"
    wl.main(["rows", "12", str(rows)])
    out = tmp_path / "out.jsonl"

    def tokens(srv):
        m = srv.metrics()
        return m["mx_sim_prompt_tokens_total"], m["mx_sim_completion_tokens_total"]

    with SimServerProcess(["--model", "bench", "--tokens", "100000..100000"]) as srv:
        r = subprocess.run([sys.executable, "-m", "matrixlang", "run", str(tmp_path / "bench_openai.json"), "-i",
                            str(rows), "-o", str(out), "--progress", "off"], capture_output=True, text=True,
                           timeout=300, env={**__import__("os").environ, "LLM_URL": srv.url}, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        run_tokens = tokens(srv)
        reqs = wl.requests_from_output(rows, out)
        assert len(reqs) == sum(json.loads(x)["turns"] for x in rows.read_text().splitlines())
        res = tmp_path / "replay.json"
        r = subprocess.run([sys.executable, str(GPU / "replay.py"), "http", "--url", srv.url, "--rows", str(rows),
                            "--output", str(out), "--out", str(res)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        replay_tokens = tokens(srv)
        rep = json.loads(res.read_text())
    # the same prompts (the sim server counts characters / 4) and the same reply lengths (max_tokens)
    assert replay_tokens[0] - run_tokens[0] == run_tokens[0]
    assert replay_tokens[1] - run_tokens[1] == run_tokens[1] == rep["completion_tokens"]
    assert rep["completion_tokens"] == sum(x["max_tokens"] for x in reqs) and rep["errors"] == 0


@pytest.mark.skipif(find_spec("langgraph") is None or find_spec("openai") is None,
                    reason="langgraph and openai are not installed")
def test_langgraph_client_does_the_same_work(tmp_path):
    from matrixlang.runtime.backends.simserver import SimServerProcess

    rows = tmp_path / "rows.jsonl"
    wl.main(["rows", "6", str(rows)])
    res = tmp_path / "lg.json"
    with SimServerProcess(["--model", "bench", "--tokens", "100000..100000"]) as srv:
        r = subprocess.run([sys.executable, str(GPU / "lg_client.py"), "--url", srv.url, "--rows", str(rows),
                            "--out", str(res), "--output", str(tmp_path / "lg.jsonl")],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lg = json.loads(res.read_text())
    want = [json.loads(x) for x in rows.read_text().splitlines()]
    assert lg["errors"] == 0 and lg["calls"] == sum(w["turns"] for w in want)
    assert lg["completion_tokens"] == sum(wl.max_tokens_of(wl.agent_of(s)) for w in want for s in range(w["turns"]))


def test_pack_and_unpack(tmp_path):
    import hashlib
    import random

    rng = random.Random(0)
    g = tmp_path / "g"
    (g / "build").mkdir(parents=True)
    (g / "extra").mkdir()
    (g / "model").mkdir()
    blobs = {"build/vllm026-bundle.tar.xz": 700_000, "extra/extra-bundle.tar.xz": 300_000, "model/smollm2.gguf.xz": 500_000}
    for name, n in blobs.items():
        (g / name).write_bytes(rng.randbytes(n))
    wheel = tmp_path / "matrixlang-0.0-py3-none-any.whl"
    wheel.write_bytes(b"w")
    r = subprocess.run([sys.executable, str(GPU / "pack.py"), "--gpu-dir", str(g), "--wheel", str(wheel),
                        "--part-mib", str(0.5)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    folders = sorted(g.glob("c[0-9]*"))
    assert len(folders) == 3 and all((d / "run.sh").is_file() and (d / "mxgpu.tar").is_file() for d in folders)
    parts, dest = tmp_path / "parts", tmp_path / "payload"
    parts.mkdir()

    def unpack():
        r = subprocess.run([sys.executable, str(GPU / "unpack.py"), "--parts", str(parts), "--dest", str(dest)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    for k, d in enumerate(folders):
        for f in d.glob("payload.part*"):
            (parts / f.name).write_bytes(f.read_bytes())
        (parts / "manifest.json").write_bytes((d / "manifest.json").read_bytes())
        said = unpack()
        if k == 0:
            assert "waiting   vllm026-bundle.tar.xz" in said
        if k == 1:
            assert "written   vllm026-bundle.tar.xz" in said and "written   extra-bundle.tar.xz" in said
    assert "written   smollm2.gguf.xz" in said
    for name in blobs:
        got = (dest / Path(name).name).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256((g / name).read_bytes()).digest()


def test_keep_server_is_adopted_by_the_next_call(tmp_path):
    """--keep-server leaves the server running for the next device call, which adopts it (no second
    start) and stops it at its end."""
    import os
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")        # never read under SIM=1
    env = {**os.environ, "SIM": "1", "MX_BENCH_PORT": str(port)}

    def bench(*extra: str) -> dict:
        out = tmp_path / f"out{len(extra)}"
        r = subprocess.run([sys.executable, str(GPU / "bench.py"), "--model", "llama8b", "--tokenizer", str(tok),
                            "--out", str(out), "--work", str(tmp_path / "work"), "--rows", "4",
                            "--phases", "server", *extra], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return json.loads((out / "gpu_llama8b.json").read_text())["phases"]["server"]

    def up() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return True
        except OSError:
            return False

    first = bench("--keep-server")
    assert first["status"] == "ok" and not first.get("adopted")
    assert up()
    second = bench()
    assert second["status"] == "ok" and second.get("adopted") is True
    assert not up()
