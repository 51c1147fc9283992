"""Markdown tables from the GPU benchmark's results (bench/results/gpu_*.json, real_*.json), for docs/gpu.md.

    python bench/gpu/report.py [bench/results]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PATHS = [("mxc", "`mxc run`, openai backend (`vllm serve`)"), ("serve", "`mxc run`, vllm backend (Ray Serve)"),
         ("langgraph", "LangGraph + openai SDK"), ("direct", "plain aiohttp client, same dependencies"),
         ("replay", "ceiling: all recorded requests at once over HTTP"),
         ("offline", "ceiling: offline `LLM.generate`, same prompts")]


def fmt(x, nd=0):
    return "–" if x is None else (f"{x:,.{nd}f}" if isinstance(x, (int, float)) else str(x))


def counted(phase: dict) -> float | None:
    """Output tokens/s by vLLM's own counter (`vllm:generation_tokens_total`) over a phase's whole window,
    start-up included: defined for a phase cut by its time box too."""
    n = (phase.get("server") or {}).get("completion_tokens")
    return n / phase["elapsed_s"] if n and phase.get("elapsed_s") else None


def model_table(res: dict) -> str:
    ph = res["phases"]
    ceil = {k: (ph.get(k) or {}).get("output_tokens_per_s") for k in ("replay", "offline")
            if (ph.get(k) or {}).get("status") == "ok"}
    c = res["config"]
    lines = [f"**{res['model']}** — {c['rows']} rows, {c['calls']} calls, {c['output_tokens']:,} output tokens "
             f"(turns {c['turns']}, max_tokens {c['max_tokens']}, ignore_eos), max_num_seqs {c['max_num_seqs']}, "
             f"rows in flight {c['max_in_flight']}, enforce_eager {bool(c['enforce_eager'])}; vLLM {res['env'].get('vllm')}",
             "", "| path | status | output tok/s | ÷ HTTP ceiling | ÷ offline ceiling | vLLM-counted tok/s "
             "over the phase (÷ ceiling's) | prefix-cache hits | GPU util mean (p50) | s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    ceil_counted = counted(ph.get("replay") or {})
    for k, label in PATHS:
        p = ph.get(k)
        if not p:
            continue
        t = p.get("output_tokens_per_s") if p.get("status") == "ok" else None
        g = p.get("gpu_run") or p.get("gpu") or {}    # serve: the run without its deployment, when recorded
        fr = [fmt(t / ceil[c_], 3) if t and c_ in ceil else "–" for c_ in ("replay", "offline")]
        status = p.get("status") + (f" ({p['why'][:60]})" if p.get("why") and p.get("status") != "ok" else "")
        n = counted(p)
        nfr = f" ({n / ceil_counted:.3f})" if n and ceil_counted else ""
        sv_ = p.get("server") or p.get("replicas") or {}    # vllm serve's /metrics, or the Serve replicas' own
        hits = (f"{sv_['prefix_cache_hits'] / sv_['prefix_cache_queries']:.1%}"
                if sv_.get("prefix_cache_queries") else "–")
        lines.append(f"| {label} | {status} | {fmt(t)} | {fr[0]} | {fr[1]} | {fmt(n)}{nfr} | {hits} | "
                     f"{fmt(g.get('util_mean'), 1)} ({fmt(g.get('util_p50'))}) | {fmt(p.get('elapsed_s'), 0)} |")
    s = ph.get("server") or {}
    sv = ph.get("serve") or {}
    lines += ["", f"server up in {fmt(s.get('up_s'), 0)} s; Serve deployment in {fmt(sv.get('deploy_s'), 0)} s"]
    return "\n".join(lines)


def real_table(real: dict) -> str:
    lines = ["| workflow | rows | status | steps/row | extract hit rate | completion tok/call | failure reasons |",
             "| --- | ---: | --- | ---: | --- | ---: | --- |"]
    for wf in ("coral", "debate"):
        r = real.get(wf)
        if not r:
            continue
        lines.append(f"| {wf} | {r['rows']} | {json.dumps(r['status'])} | {r['steps_mean']} | "
                     f"{json.dumps(r['extract_hit_rate'])} | {r['completion_tokens_per_call']} | "
                     f"{json.dumps(r['failure_details'])[:120]} |")
    return "\n".join(lines)


def main() -> int:
    d = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
    for f in sorted(d.glob("gpu_*.json")):
        print(model_table(json.loads(f.read_text())), "\n")
    for f in sorted(d.glob("real_*.json")):
        print(f"Real text ({f.name}):\n")
        print(real_table(json.loads(f.read_text())), "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
