"""Token-exact histories on the Serve (``vllm``) path, on a real model: the replica's own code
(``VLLMServer``, without Ray) drives coral conversations turn by turn through the runtime's engine,
once passing the replies' token ids back (what the runtime does) and once as text only (what it did).

    VLLM_CPU_KVCACHE_SPACE=1 TOKENIZERS_PARALLELISM=false \\
      python bench/token_exact.py [--model DIR] [--rows 4] [--turns 8] [--max-tokens 48]

Needs vLLM (not Ray). coral (workflows/coral.mx) is changed only to run exactly ``--turns`` steps (no
early agreement), with ``ignore_eos`` and a fixed ``max_tokens``. For every agent's call after its
first, it checks whether the prompt ids start with the agent's previous prompt ids followed by the ids
it generated then, and reports vLLM's prefix-cache hits per mode (the cache is reset between modes).
Prints one JSON line per mode; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL = Path.home() / ".cache" / "matrixlang" / "smollm2-135m-instruct"
QUESTIONS = [
    ("Which planet is known as the red planet?", ["Venus", "Mars", "Jupiter", "Saturn"]),
    ("What is the boiling point of water at sea level in Celsius?", ["90", "100", "110", "120"]),
    ("Which gas do plants absorb for photosynthesis?", ["Oxygen", "Nitrogen", "Carbon dioxide", "Helium"]),
    ("How many sides does a hexagon have?", ["5", "6", "7", "8"]),
    ("Who wrote Hamlet?", ["Dickens", "Shakespeare", "Austen", "Tolstoy"]),
    ("What is the largest ocean?", ["Atlantic", "Indian", "Arctic", "Pacific"]),
]


def import_runtime() -> None:
    """Make ``matrixlang.runtime`` importable from this checkout when matrixlang is not installed
    (the fixed layout maps ``runtime/`` to ``matrixlang.runtime``, see setup.py)."""
    try:
        import matrixlang.runtime  # noqa: F401
    except ImportError:
        import matrixlang

        matrixlang.__path__.append(str(ROOT))


def workflow(model: str, turns: int, max_tokens: int) -> dict:
    """coral with a vllm model, exactly ``turns`` steps, ``ignore_eos`` and fixed ``max_tokens``."""
    from bench.programs import CORAL, compile_program

    ir = compile_program(CORAL, {'backend = "openai"': 'backend = "vllm"'})
    m = ir["models"]["llm"]
    m["name"] = model
    m["params"] = {"temperature": 0.7, "max_tokens": max_tokens, "ignore_eos": True}
    st = ir["states"]["student"]["transitions"]
    del st[0]                                   # no early agreement: every row runs `turns` steps
    st[0]["when"]["right"]["value"] = turns
    ir["limits"]["max_steps"] = turns + 4
    return ir


async def drive(server, eng, rows: int, exact: bool) -> dict:
    """Run ``rows`` conversations step by step (all rows' calls of a step at once)."""
    from matrixlang.runtime.backends.vllm_serve import unpack_ids
    from matrixlang.runtime.semantics.engine import Reply

    msgs = [eng.new_message({"id": f"q{i}", "question": q, "choices": c}, i, time.time())
            for i, (q, c) in enumerate(QUESTIONS[i % len(QUESTIONS)] for i in range(rows))]
    last: dict[tuple[int, str], list[int]] = {}        # (row, agent) -> previous prompt + generated ids
    checks = {"calls": 0, "later_calls": 0, "extends_previous": 0, "reused": 0.0, "prompt_tokens": 0}
    while any(not m.finished for m in msgs):
        live = [m for m in msgs if not m.finished]
        calls = [eng.prepare_call(m) for m in live]
        reqs = []
        for m, call in zip(live, calls, strict=True):
            ids = server.prompt_ids(call.messages)
            prev = last.get((m.position, call.agent))
            if prev is not None:
                n = next((k for k, (a, b) in enumerate(zip(prev, ids, strict=False)) if a != b), min(len(prev), len(ids)))
                checks["later_calls"] += 1
                checks["extends_previous"] += ids[:len(prev)] == prev
                checks["reused"] += n / len(prev)
            reqs.append((m, call, ids))
        outs = await asyncio.gather(*(server.chat({"messages": c.messages, "params": c.params,
                                                   "request_id": f"{m.id}-{m.steps}"}) for m, c, _ in reqs))
        for (m, call, ids), out in zip(reqs, outs, strict=True):
            assert "error" not in out, out
            last[(m.position, call.agent)] = ids + unpack_ids(out["token_ids"])
            checks["calls"] += 1
            checks["prompt_tokens"] += out["prompt_tokens"]
            reply = Reply(out["text"], out["prompt_tokens"], out["completion_tokens"],
                          token_ids=out["token_ids"] if exact else None, tokenizer=out["tokenizer"])
            eng.apply_reply(m, reply, (), time.time())
    if checks["later_calls"]:
        checks["reused"] = round(checks["reused"] / checks["later_calls"], 4)
    return checks


def cache_counters() -> tuple[float, float]:
    """vLLM's prefix-cache (hits, queries) counters, in tokens."""
    from vllm.v1.metrics.reader import Counter, get_metrics_snapshot

    vals = {m.name: m.value for m in get_metrics_snapshot() if isinstance(m, Counter)}
    return vals.get("vllm:prefix_cache_hits", 0.0), vals.get("vllm:prefix_cache_queries", 0.0)


async def main_async(args: argparse.Namespace) -> None:
    import_runtime()
    from matrixlang.runtime.backends.vllm_serve import VLLMServer
    from matrixlang.runtime.semantics.engine import Engine

    model = str(args.model)
    server = VLLMServer(model, {"model": model, "dtype": "float32", "enforce_eager": True,
                                "max_model_len": args.max_model_len, "enable_prefix_caching": True,
                                "disable_log_stats": False, "seed": 0})
    ir = workflow(model, args.turns, args.max_tokens)
    for mode in args.modes.split(","):
        await server.engine.reset_prefix_cache()
        await asyncio.sleep(1.0)
        h0, q0 = cache_counters()
        t0 = time.monotonic()
        eng = Engine(ir, seed=1)
        checks = await drive(server, eng, args.rows, exact=mode == "exact")
        wall = time.monotonic() - t0
        await asyncio.sleep(1.5)                # the stat loggers catch up
        h1, q1 = cache_counters()
        hits, queries = h1 - h0, q1 - q0
        print(json.dumps({"mode": mode, "rows": args.rows, "turns": args.turns, "max_tokens": args.max_tokens,
                          **checks, "cache_hits": hits, "cache_queries": queries,
                          "hit_rate": round(hits / queries, 4) if queries else None,
                          "prefilled": queries - hits, "wall_s": round(wall, 1),
                          "spliced": server.spliced, "unspliced": server.unspliced}), flush=True)
    server.engine.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--modes", default="text,exact", help="text (ids not passed back), exact (passed back)")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
