"""vLLM's own ceiling on the requests a workflow run made, and a plain multi-turn client.

The requests are rebuilt from the run's input and output rows (bench/gpu/workload.py
`requests_from_output`): the same messages, the same `max_tokens`, `ignore_eos`, so the engine does
the same work (prompt tokens and output tokens) as in the run.

    replay.py http    --url URL --model NAME --rows R.jsonl --output O.jsonl --out RES.json
        every request sent at once to the OpenAI-compatible server (no dependency between a row's
        calls; the server queues what it cannot batch): the serving ceiling.
    replay.py offline --model-dir DIR --rows R.jsonl --output O.jsonl --out RES.json [--engine KEY=VAL ...]
        vLLM's `LLM.generate` on the same prompts (chat template applied first, not timed): the
        engine's ceiling, no HTTP.
    replay.py direct  --url URL --model NAME --rows R.jsonl --out RES.json [--max-in-flight N]
        the workflow itself with a plain aiohttp client, row by row (each call waits for the
        previous reply): what a minimal client reaches with the same dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload as wl  # noqa: E402


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _post(session, url: str, body: dict) -> tuple[dict, float]:
    t0 = time.perf_counter()
    for attempt in range(4):
        try:
            async with session.post(url + "/chat/completions", json=body) as r:
                if r.status >= 500 and attempt < 3:
                    await asyncio.sleep(0.5 * 2 ** attempt)
                    continue
                data = await r.json(content_type=None)
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {str(data)[:300]}")
                return data, time.perf_counter() - t0
        except (OSError, asyncio.TimeoutError):
            if attempt == 3:
                raise
            await asyncio.sleep(0.5 * 2 ** attempt)
    raise RuntimeError("unreachable")


def _session(limit: int):
    import aiohttp
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
                                 timeout=aiohttp.ClientTimeout(total=3600))


async def http_replay(url: str, model: str, reqs: list[dict], concurrency: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    lat, usage = [], {"prompt_tokens": 0, "completion_tokens": 0}
    errors = []

    async def one(session, r):
        body = {"model": model, "messages": r["messages"], "max_tokens": r["max_tokens"],
                "temperature": wl.TEMPERATURE, "ignore_eos": True}
        async with sem:
            try:
                data, dt = await _post(session, url, body)
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(str(e)[:200])
                return
        lat.append(dt)
        u = data.get("usage") or {}
        usage["prompt_tokens"] += int(u.get("prompt_tokens") or 0)
        usage["completion_tokens"] += int(u.get("completion_tokens") or 0)

    async with _session(concurrency) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(session, r) for r in reqs))
        elapsed = time.perf_counter() - t0
    return {"mode": "http", "requests": len(reqs), "errors": len(errors), "error_samples": errors[:3],
            "elapsed_s": elapsed, **usage, "output_tokens_per_s": usage["completion_tokens"] / elapsed,
            "concurrency": concurrency, "latency_p50_s": pct(lat, .5), "latency_p95_s": pct(lat, .95)}


async def direct(url: str, model: str, rows: list[dict], max_in_flight: int, out_path: Path | None) -> dict:
    sem = asyncio.Semaphore(max_in_flight)
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}
    errors, outs = [], []

    async def row_run(session, row):
        async with sem:
            hist: list[dict] = []
            try:
                while len(hist) < row["turns"]:
                    agent, msgs = wl.messages_for(row, hist)
                    body = {"model": model, "messages": msgs, "max_tokens": wl.max_tokens_of(agent),
                            "temperature": wl.TEMPERATURE, "ignore_eos": True}
                    data, _ = await _post(session, url, body)
                    hist.append({"agent": agent, "text": data["choices"][0]["message"]["content"] or ""})
                    u = data.get("usage") or {}
                    usage["prompt_tokens"] += int(u.get("prompt_tokens") or 0)
                    usage["completion_tokens"] += int(u.get("completion_tokens") or 0)
                    usage["calls"] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(str(e)[:200])
            outs.append({"id": row["id"], "turns": len(hist), "transcript": hist})

    async with _session(max_in_flight) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(row_run(session, r) for r in rows))
        elapsed = time.perf_counter() - t0
    if out_path:
        with open(out_path, "w") as f:
            for o in outs:
                f.write(json.dumps(o) + "\n")
    return {"mode": "direct", "rows": len(rows), "errors": len(errors), "error_samples": errors[:3],
            "elapsed_s": elapsed, **usage, "output_tokens_per_s": usage["completion_tokens"] / elapsed,
            "max_in_flight": max_in_flight}


def offline(model_dir: str, reqs: list[dict], engine: dict) -> dict:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tok = AutoTokenizer.from_pretrained(engine.get("tokenizer") or model_dir)
    t0 = time.perf_counter()
    prompts = []
    for r in reqs:
        ids = tok.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # transformers 5 may hand back a BatchEncoding
            ids = list(ids["input_ids"])
        prompts.append({"prompt_token_ids": ids})
    t_template = time.perf_counter() - t0
    t0 = time.perf_counter()
    llm = LLM(model=model_dir, **engine)
    t_start = time.perf_counter() - t0
    sps = [SamplingParams(max_tokens=r["max_tokens"], temperature=wl.TEMPERATURE, ignore_eos=True) for r in reqs]
    warm = min(64, len(prompts))
    llm.generate(prompts[:warm], sps[:warm], use_tqdm=False)  # first batches pay one-time costs
    t0 = time.perf_counter()
    outs = llm.generate(prompts, sps, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    completion = sum(len(o.outputs[0].token_ids) for o in outs)
    prompt = sum(len(p["prompt_token_ids"]) for p in prompts)
    return {"mode": "offline", "requests": len(reqs), "elapsed_s": elapsed, "prompt_tokens": prompt,
            "completion_tokens": completion, "output_tokens_per_s": completion / elapsed,
            "chat_template_s": t_template, "engine_start_s": t_start, "engine": engine}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["http", "offline", "direct"])
    ap.add_argument("--url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--model", default="bench")
    ap.add_argument("--model-dir")
    ap.add_argument("--rows", required=True)
    ap.add_argument("--output", help="the run's output rows (http, offline)")
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--concurrency", type=int, default=4096)
    ap.add_argument("--max-in-flight", type=int, default=2048)
    ap.add_argument("--direct-output", help="direct: write its rows here")
    ap.add_argument("--engine", action="append", default=[], help="offline: KEY=VALUE (JSON value)")
    a = ap.parse_args(argv)
    if a.mode == "direct":
        rows = [json.loads(x) for x in Path(a.rows).read_text().splitlines() if x.strip()]
        res = asyncio.run(direct(a.url, a.model, rows, a.max_in_flight,
                                 Path(a.direct_output) if a.direct_output else None))
    else:
        reqs = wl.requests_from_output(Path(a.rows), Path(a.output))
        if a.mode == "http":
            res = asyncio.run(http_replay(a.url, a.model, reqs, a.concurrency))
        else:
            engine = {}
            for kv in a.engine:
                k, v = kv.split("=", 1)
                try:
                    engine[k] = json.loads(v)
                except json.JSONDecodeError:
                    engine[k] = v
            res = offline(a.model_dir, reqs, engine)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("error_samples", "engine")}))
    return 0 if not res.get("errors") else 1


if __name__ == "__main__":
    sys.exit(main())
