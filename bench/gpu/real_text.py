"""What a real model does with the example workflows: input rows replicated, and each run's output read
back into figures (status and failure reasons, steps and rounds per row, how often each agent's
extract found its value). Used by bench/gpu/bench.py (phase `real`) and tests/runtime/test_real_model.py.

    python bench/gpu/real_text.py analyse coral OUT.jsonl
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

EXTRACTS = {  # the workflows' own extract patterns (workflows/coral.mx, workflows/debate.mx)
    "coral": {"teacher": r"Answer:\s*([A-J])", "student": r"Answer:\s*([A-J])"},
}


def replicate(src: Path, dst: Path, copies: int) -> int:
    rows = [json.loads(x) for x in Path(src).read_text().splitlines() if x.strip()]
    n = 0
    with open(dst, "w") as f:
        for c in range(copies):
            for r in rows:
                f.write(json.dumps({**r, "id": f"{r['id']}#{c}"}) + "\n")
                n += 1
    return n


def _read(out: Path) -> list[dict]:
    return [json.loads(x) for x in Path(out).read_text().splitlines() if x.strip()]


def _json_field(text: str, key: str):
    """The debate judge's extract, as the runtime's json("winner") reads a reply: the first JSON object."""
    m = re.search(r"\{.*\}", text, re.S)
    if not m:
        return None
    try:
        return json.loads(m.group(0)).get(key)
    except (json.JSONDecodeError, AttributeError):
        return None


def analyse(workflow: str, out: Path) -> dict:
    rows = _read(out)
    status = Counter(r["_meta"]["status"] + ("/" + r["_meta"]["reason"] if r["_meta"].get("reason") else "")
                     for r in rows)
    steps = [r["_meta"]["steps"] for r in rows]
    details = Counter((r["_meta"].get("detail") or "")[:160] for r in rows if r["_meta"].get("detail"))
    usage = Counter()
    for r in rows:
        for u in (r["_meta"].get("usage") or {}).values():
            usage["prompt_tokens"] += u.get("prompt_tokens", 0)
            usage["completion_tokens"] += u.get("completion_tokens", 0)
            usage["calls"] += u.get("calls", 0)
    res: dict = {"rows": len(rows), "status": dict(status), "failure_details": dict(details.most_common(5)),
                 "steps_mean": round(sum(steps) / max(1, len(steps)), 2), "steps_hist": dict(sorted(Counter(steps).items())),
                 "completion_tokens_per_call": round(usage["completion_tokens"] / max(1, usage["calls"]), 1),
                 "prompt_tokens_per_call": round(usage["prompt_tokens"] / max(1, usage["calls"]), 1)}
    replies = Counter()
    hits = Counter()
    for r in rows:
        for h in r.get("transcript") or []:
            replies[h["agent"]] += 1
            if workflow == "coral":
                hits[h["agent"]] += bool(re.search(EXTRACTS["coral"][h["agent"]], h["text"], re.S))
            elif workflow == "debate" and h["agent"] == "judge":
                hits["judge"] += _json_field(h["text"], "winner") is not None
    res["extract_hit_rate"] = {a: round(hits[a] / replies[a], 3) for a in replies
                               if workflow == "coral" or a == "judge"}
    res["replies"] = dict(replies)
    if workflow == "coral":
        res["rounds_mean"] = round(sum(s / 2 for s in steps) / max(1, len(steps)), 2)
        ok = [r for r in rows if r["_meta"]["status"] == "ok"]
        res["agreed"] = len(ok)
        res["correct"] = sum(1 for r in rows if r.get("correct") is True)
    if workflow == "debate":
        res["winners"] = dict(Counter(str(r.get("winner")) for r in rows))
        res["rounds_mean"] = round(sum((r.get("rounds") or 0) for r in rows) / max(1, len(rows)), 2)
    return res


def samples(out: Path, n: int = 2, chars: int = 400) -> list[dict]:
    rows = _read(out)[:n]
    return [{"id": r["id"], "status": r["_meta"]["status"], "reason": r["_meta"].get("reason"),
             "transcript": [{"agent": h["agent"], "text": h["text"][:chars]} for h in (r.get("transcript") or [])[:4]]}
            for r in rows]


def on_serve(src: Path, dst: Path, model_dir: Path, *, max_model_len: int = 4096, gpu_mem: float | None = None,
             dtype: str = "bfloat16", workflow_name: str | None = None) -> Path:
    """An example workflow (coral.mx, debate.mx: one `model llm` block on the openai backend) moved to the
    `vllm` backend with `model_dir`; its sampling keys are kept. `workflow_name` renames the workflow,
    so that several programs share one Serve application (mx-<workflow>-<model>)."""
    text = Path(src).read_text()
    block = re.search(r"^model llm \{.*?^\}", text, re.S | re.M)
    assert block, f"{src}: no `model llm` block"
    body = block.group(0)
    body = re.sub(r'backend = "openai"', 'backend = "vllm"', body)
    body = re.sub(r'name = "[^"]*"', f'name = "{model_dir}"', body)
    body = re.sub(r"\n\s*url = [^\n]*", "", body)
    keys = f'  max_model_len = {max_model_len}\n  dtype = "{dtype}"\n'
    if gpu_mem is not None:
        keys += f"  gpu_memory_utilization = {gpu_mem}\n"
    body = body[:-1] + keys + "}"
    text = text[:block.start()] + body + text[block.end():]
    if workflow_name:
        text = re.sub(r"^workflow \w+ ", f"workflow {workflow_name} ", text, count=1, flags=re.M)
    Path(dst).write_text(text)
    return Path(dst)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "analyse":
        print(json.dumps(analyse(sys.argv[2], Path(sys.argv[3])), indent=1))
    else:
        print(__doc__)
        sys.exit(2)
