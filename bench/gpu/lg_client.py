"""The benchmark's workflow in LangGraph with the openai SDK, for comparison with `mxc run`.

A StateGraph of two nodes (teacher, student) and a conditional edge that ends after the row's
`turns`; each node sends the same messages as the runtime (bench/gpu/workload.py `messages_for`)
through `AsyncOpenAI.chat.completions.create` with `max_tokens` and `ignore_eos` (extra_body). All
rows run in one asyncio loop, at most --max-in-flight graphs at once (the usual way to drive
LangGraph over a dataset: `graph.ainvoke` per row under a semaphore). The SDK's connection pool is
raised to --max-in-flight (its default keeps 100 alive).

    lg_client.py --url URL --model NAME --rows R.jsonl --out RES.json [--output O.jsonl] [--max-in-flight N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload as wl  # noqa: E402


class State(TypedDict):
    row: dict
    history: list
    usage: dict


def build_graph(client, model: str):
    from langgraph.graph import END, START, StateGraph

    async def call(state: State) -> dict:
        agent, msgs = wl.messages_for(state["row"], state["history"])
        r = await client.chat.completions.create(
            model=model, messages=msgs, max_tokens=wl.max_tokens_of(agent), temperature=wl.TEMPERATURE,
            extra_body={"ignore_eos": True})
        u = state["usage"]
        usage = {"prompt_tokens": u["prompt_tokens"] + (r.usage.prompt_tokens if r.usage else 0),
                 "completion_tokens": u["completion_tokens"] + (r.usage.completion_tokens if r.usage else 0)}
        return {"history": state["history"] + [{"agent": agent, "text": r.choices[0].message.content or ""}],
                "usage": usage}

    g = StateGraph(State)
    g.add_node("teacher", call)
    g.add_node("student", call)
    g.add_edge(START, "teacher")
    g.add_edge("teacher", "student")
    g.add_conditional_edges("student", lambda s: END if len(s["history"]) >= s["row"]["turns"] else "teacher",
                            {END: END, "teacher": "teacher"})
    return g.compile()


async def run(url: str, model: str, rows: list[dict], max_in_flight: int, out_path: Path | None) -> dict:
    import openai

    limits = type(openai._constants.DEFAULT_CONNECTION_LIMITS)(
        max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    http = openai.DefaultAsyncHttpxClient(limits=limits, timeout=3600)
    client = openai.AsyncOpenAI(base_url=url, api_key="none", http_client=http, max_retries=3)
    graph = build_graph(client, model)
    sem = asyncio.Semaphore(max_in_flight)
    outs, errors = [], []
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}

    async def one(row):
        async with sem:
            try:
                s = await graph.ainvoke({"row": row, "history": [], "usage": {"prompt_tokens": 0, "completion_tokens": 0}},
                                        config={"recursion_limit": 200})
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(e).__name__}: {e}"[:200])
                return
        usage["prompt_tokens"] += s["usage"]["prompt_tokens"]
        usage["completion_tokens"] += s["usage"]["completion_tokens"]
        usage["calls"] += len(s["history"])
        outs.append({"id": row["id"], "turns": len(s["history"]), "transcript": s["history"]})

    t0 = time.perf_counter()
    await asyncio.gather(*(one(r) for r in rows))
    elapsed = time.perf_counter() - t0
    await client.close()
    if out_path:
        with open(out_path, "w") as f:
            for o in outs:
                f.write(json.dumps(o) + "\n")
    from importlib.metadata import version
    return {"mode": "langgraph", "rows": len(rows), "rows_ok": len(outs), "errors": len(errors),
            "error_samples": errors[:3], "elapsed_s": elapsed, **usage,
            "output_tokens_per_s": usage["completion_tokens"] / elapsed, "max_in_flight": max_in_flight,
            "versions": {p: version(p) for p in ("langgraph", "langchain-core", "openai")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--model", default="bench")
    ap.add_argument("--rows", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--output")
    ap.add_argument("--max-in-flight", type=int, default=2048)
    a = ap.parse_args(argv)
    rows = [json.loads(x) for x in Path(a.rows).read_text().splitlines() if x.strip()]
    res = asyncio.run(run(a.url, a.model, rows, a.max_in_flight, Path(a.output) if a.output else None))
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "error_samples"}))
    return 0 if not res["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
