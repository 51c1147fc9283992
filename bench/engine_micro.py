"""Micro-benchmark of the runtime's pure core: prepare_call + apply_reply per second for coral steps.

    python bench/engine_micro.py [--steps N] [--backend sim|none]

Rows run the spec's coral workflow (workflows/coral.mx) with scripted disagreeing replies until `turns >= 20` ends them
(so the conversation grows from 0 to 19 earlier steps, like a real long row), then a new row starts.
Prints the figure; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:      # `python bench/engine_micro.py` from the checkout
    sys.path.insert(0, str(HERE.parent))

from matrixlang.runtime.semantics.engine import Engine, Reply  # noqa: E402

from bench.programs import coral  # noqa: E402

ROW = {"id": "q", "question": "Which planet is known as the red planet? " * 4,
       "choices": ["Venus", "Mars", "Jupiter", "Saturn"], "answer": "B"}


def run(steps: int, backend: str | None) -> tuple[float, float, int, int]:
    eng = Engine(coral(), seed=1, backend=backend)
    reply_t = Reply("Let me reason about it step by step. " * 20 + "Answer: A", 300, 120)
    reply_s = Reply("I see it differently, because of the evidence. " * 20 + "Answer: C", 300, 120)
    done = rows = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while done < steps:
        msg = eng.new_message({**ROW, "id": f"q{rows}"}, rows, 0.0)
        rows += 1
        while msg.status == "running" and done < steps:
            eng.prepare_call(msg, ())
            eng.apply_reply(msg, reply_t if msg.state == "teacher" else reply_s, (), 1.0)
            done += 1
    return time.perf_counter() - t0, time.process_time() - c0, done, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--backend", choices=["sim", "none"], default="sim")
    args = ap.parse_args()
    backend = None if args.backend == "none" else "sim"
    run(500, backend)  # warm-up
    elapsed, cpu, steps, rows = run(args.steps, backend)
    print(f"coral, backend={args.backend}: {steps} steps ({rows} rows) in {elapsed:.2f}s wall, {cpu:.2f}s CPU = "
          f"{steps / cpu:,.0f} prepare_call+apply_reply per CPU-second ({cpu / steps * 1e6:.1f} us/step; "
          f"{steps / elapsed:,.0f}/s wall)")


if __name__ == "__main__":
    main()
