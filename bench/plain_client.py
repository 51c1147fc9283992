"""The plain-client baseline of bench/http_path.py: the talk workload (bench/workloads/talk.mx) as a
plain asyncio + aiohttp loop, one ClientSession, a semaphore of IN_FLIGHT rows. It sends the very
requests `mxc run` sends (same messages, params and `mx_sim` hints), so the server does the same work.

    python bench/plain_client.py URL ROWS.jsonl IN_FLIGHT SEED > result.json
"""

import asyncio
import json
import random
import sys
import time

import aiohttp


def hint(seed: int, row_id: str, step: int) -> dict:
    """The `mx_sim` hint the runtime sends for an agent without a `sim` template: 20..200 tokens."""
    return {"text": None, "tokens": random.Random(f"{seed}:{row_id}:{step}").randint(20, 200),
            "seed": f"{seed}:{row_id}:{step}"}


async def talk(session, url, sem, row, seed, calls) -> int:
    async with sem:
        history: list[tuple[str, str]] = []
        for step in range(2 * row["rounds"]):
            me = "a" if step % 2 == 0 else "b"
            system = (f"You discuss {row['topic']} with a partner. Answer in a few sentences." if me == "a"
                      else f"Reply to your partner about {row['topic']}.")
            msgs = [{"role": "system", "content": system}]
            msgs += [{"role": "assistant" if who == me else "user", "content": text} for who, text in history]
            if me == "a":
                msgs.append({"role": "user", "content": history[-1][1] if history else "Begin."})
            body = {"model": "sim", "messages": msgs, "max_tokens": 256, "mx_sim": hint(seed, row["id"], step)}
            t0 = time.perf_counter()
            async with session.post(url + "/chat/completions", json=body) as resp:
                resp.raise_for_status()
                reply = await resp.json()
            calls.append((time.perf_counter() - t0, reply["usage"]["completion_tokens"]))
            history.append((me, reply["choices"][0]["message"]["content"]))
        return len(history)


async def main(url: str, path: str, in_flight: int, seed: int) -> dict:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    calls: list[tuple[float, int]] = []
    sem = asyncio.Semaphore(in_flight)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        t0, cpu0 = time.perf_counter(), time.process_time()
        steps = await asyncio.gather(*(talk(session, url, sem, r, seed, calls) for r in rows))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"rows": len(rows), "elapsed_s": wall, "cpu_s": cpu, "calls": len(calls),
            "steps": {r["id"]: n for r, n in zip(rows, steps, strict=True)}, "latencies": calls}


if __name__ == "__main__":
    out = asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    json.dump(out, sys.stdout)
