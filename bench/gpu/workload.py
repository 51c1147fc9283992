"""The GPU benchmark's workload: a Coral-like two-agent conversation with growing histories and fixed
length distributions, written as input rows, a .mx program (one per backend) and its IR with
`ignore_eos` in the model's params; and the conversation rebuilt from an output row, call by call,
exactly as the runtime builds it (runtime/semantics/engine.py `prepare_call`), for the replay and the
LangGraph client.

Lengths (the same for every system measured, real or random weights):
  - a row's `turns` (steps: teacher, student, teacher, ...) is drawn uniformly from TURNS;
  - its topic, in the system prompts, is TOPIC_WORDS words long (drawn uniformly);
  - every reply is exactly `max_tokens` long (teacher TEACHER_TOKENS, student STUDENT_TOKENS):
    `ignore_eos = true` keeps the engine generating past its end-of-sequence token.

    python bench/gpu/workload.py rows N OUT.jsonl [--seed S]
    python bench/gpu/workload.py programs DIR --model NAME [--vllm-model PATH ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

TURNS = (4, 6, 8)
TOPIC_WORDS = (30, 300)
TEACHER_TOKENS = 160
STUDENT_TOKENS = 96
TEMPERATURE = 0.8

# The agents' templates. Single-line, so that the .mx and the Python rendering below agree exactly.
TEACHER_SYSTEM = "You lead a discussion about: {{ row.topic }}. Reason step by step and end with a one-line summary."
STUDENT_SYSTEM = "You question your partner about: {{ row.topic }}. Point out one weakness, then agree or disagree."
TEACHER_PROMPT = "{{ 'Begin.' if turns == 0 else 'Continue.' }}"

WORDS = ["energy", "grid", "storage", "market", "policy", "river", "city", "school", "model", "data", "signal", "ocean", "forest", "carbon", "price", "labour", "trade", "health", "vaccine", "climate", "rain", "soil", "crop", "water", "transport", "rail", "road", "bridge", "port", "language", "history", "court", "law", "vote", "budget", "tax", "debt", "bank", "credit", "loan", "risk", "insurance", "software", "network", "protocol", "cache", "memory", "kernel", "compiler", "theorem", "proof", "prime", "graph", "matrix", "vector", "tensor", "gradient"]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.randint(*TOPIC_WORDS)
        topic = " ".join(rng.choice(WORDS) for _ in range(words))
        rows.append({"id": f"r{i:06d}", "topic": topic, "turns": rng.choice(TURNS)})
    return rows


def program(model: str, backend: str = "openai", *, max_model_len: int = 4096,
            gpu_memory_utilization: float = 0.85, dtype: str = "bfloat16", max_concurrency: int = 4096) -> str:
    if backend == "openai":
        model_keys = f'url = env("LLM_URL", "http://127.0.0.1:8000/v1")  max_concurrency = {max_concurrency}'
    else:
        model_keys = (f"max_model_len = {max_model_len}  gpu_memory_utilization = {gpu_memory_utilization}  "
                      f'dtype = "{dtype}"  max_concurrency = {max_concurrency}')
    return f'''# Written by bench/gpu/workload.py: the GPU benchmark's Coral-like workload ({backend} backend).
workflow gpubench "Two agents alternate over a growing history for a fixed number of turns"

input {{
  id: str
  topic: str
  turns: int
}}

limits {{ max_steps = 64  row_timeout = 60m  call_timeout = 10m  retries = 2 }}

model llm {{
  backend = "{backend}"
  name = "{model}"
  {model_keys}
  temperature = {TEMPERATURE}
  tokens = 4096..4096
}}

agent teacher {{
  model = llm
  max_concurrency = 100000
  system = "{TEACHER_SYSTEM}"
  prompt = "{TEACHER_PROMPT}"
  params {{ max_tokens = {TEACHER_TOKENS} }}
}}

agent student {{
  model = llm
  max_concurrency = 100000
  system = "{STUDENT_SYSTEM}"
  params {{ max_tokens = {STUDENT_TOKENS} }}
}}

flow {{
  start -> teacher
  teacher -> student
  student -> end when turns >= row.turns
  student -> teacher
}}

output {{
  id = row.id
  turns = turns
  transcript = history
}}
'''


def compile_patched(mx: Path, out: Path, python: str = sys.executable) -> dict:
    """`mxc compile` the program, then put `ignore_eos: true` in every model's params (the IR takes any
    sampling key; the language has `ignore_eos` from this branch on, which this does not rely on)."""
    # cwd: the program's folder, so that `-m matrixlang` is the installed package, not a checkout's
    # matrixlang/ folder (whose runtime/ lies beside it) when run from a repository's root.
    r = subprocess.run([python, "-m", "matrixlang", "compile", str(mx.resolve()), "-o", str(out.resolve())],
                       capture_output=True, text=True, cwd=str(mx.resolve().parent))
    if r.returncode != 0:
        raise SystemExit(f"mxc compile {mx} failed:\n{r.stdout}{r.stderr}")
    ir = json.loads(out.read_text())
    for m in ir["models"].values():
        m.setdefault("params", {})["ignore_eos"] = True
    out.write_text(json.dumps(ir, indent=1, sort_keys=True) + "\n")
    return ir


# ---- the conversation, rebuilt -------------------------------------------------------------------

def _render(tmpl: str, **ctx) -> str:
    import jinja2
    return jinja2.Environment(autoescape=False).from_string(tmpl).render(**ctx)


def agent_of(step: int) -> str:
    return "teacher" if step % 2 == 0 else "student"


def max_tokens_of(agent: str) -> int:
    return TEACHER_TOKENS if agent == "teacher" else STUDENT_TOKENS


def messages_for(row: dict, history: list[dict], step: int | None = None) -> tuple[str, list[dict]]:
    """(agent, messages) of call number `step` (default: the next one) of a row whose earlier replies
    are `history` ([{"agent", "text"}, ...]) — the runtime's order: system, the history (the agent's
    own replies as assistant, the other's as user), then the prompt."""
    step = len(history) if step is None else step
    agent = agent_of(step)
    system = TEACHER_SYSTEM if agent == "teacher" else STUDENT_SYSTEM
    msgs = [{"role": "system", "content": _render(system, row=row)}]
    for e in history[:step]:
        msgs.append({"role": "assistant" if e["agent"] == agent else "user", "content": e["text"]})
    if agent == "teacher":
        msgs.append({"role": "user", "content": _render(TEACHER_PROMPT, turns=step)})
    return agent, msgs


def requests_from_output(rows_path: Path, out_path: Path) -> list[dict]:
    """Every call of a run, rebuilt from its input rows and its output rows' transcripts:
    [{"id", "step", "agent", "messages", "max_tokens"}]. Rows that did not finish give their calls
    up to where they stopped."""
    rows = {}
    with open(rows_path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows[r["id"]] = r
    reqs = []
    with open(out_path) as f:
        for line in f:
            if not line.strip():
                continue
            o = json.loads(line)
            row, hist = rows[o["id"]], o.get("transcript") or []
            for step in range(len(hist)):
                agent, msgs = messages_for(row, hist, step)
                reqs.append({"id": o["id"], "step": step, "agent": agent, "messages": msgs,
                             "max_tokens": max_tokens_of(agent)})
    return reqs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rows")
    r.add_argument("n", type=int)
    r.add_argument("out")
    r.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("programs")
    p.add_argument("dir")
    p.add_argument("--model", required=True, help="served model name (openai)")
    p.add_argument("--vllm-model", help="model directory for the vllm (Ray Serve) backend")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args(argv)
    if a.cmd == "rows":
        with open(a.out, "w") as f:
            for row in make_rows(a.n, a.seed):
                f.write(json.dumps(row) + "\n")
        return 0
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "bench_openai.mx").write_text(program(a.model, "openai"))
    compile_patched(d / "bench_openai.mx", d / "bench_openai.json")
    if a.vllm_model:
        (d / "bench_vllm.mx").write_text(program(a.vllm_model, "vllm", max_model_len=a.max_model_len,
                                                 gpu_memory_utilization=a.gpu_memory_utilization, dtype=a.dtype))
        compile_patched(d / "bench_vllm.mx", d / "bench_vllm.json")
    print(json.dumps({"dir": str(d), "files": sorted(os.listdir(d))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
