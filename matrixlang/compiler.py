"""Checked program → IR (docs/ir.md): plain, deterministic data with every default filled in."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from . import IR_VERSION
from . import catalog as cat
from . import nodes as n
from .checker import Analysis, check
from .errors import MxError
from .flowgraph import state_key
from .irschema import input_schema, message_schema
from .printer import expr as expr_text
from .source import Source


def compile_source(source: Source) -> tuple[dict | None, Analysis]:
    """The IR of a program (None when it has errors) and the analysis with its diagnostics."""
    an = check(source)
    if not an.ok:
        return None, an
    return build_ir(an), an


def compile_file(path: str | Path) -> dict:
    """The IR of a `.mx` file; raises MxError with the diagnostics when it has errors."""
    ir, an = compile_source(Source.from_path(path))
    if ir is None:
        raise MxError([d for d in an.diags.sorted() if d.is_error])
    return ir


def dumps(ir: dict, pretty: bool = True) -> str:
    """Canonical JSON: sorted keys; byte-identical for the same IR."""
    if pretty:
        return json.dumps(ir, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    return json.dumps(ir, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ---- expressions ----------------------------------------------------------------------------

def expr_ir(e: n.Expr) -> dict[str, Any]:
    if isinstance(e, n.Literal):
        return {"op": "lit", "value": e.value}
    if isinstance(e, n.ListExpr):
        return {"op": "list", "items": [expr_ir(i) for i in e.items]}
    if isinstance(e, n.Var):
        return {"op": "var", "name": e.name}
    if isinstance(e, n.Attr):
        return {"op": "attr", "obj": expr_ir(e.obj), "name": e.name.value}
    if isinstance(e, n.Index):
        return {"op": "index", "obj": expr_ir(e.obj), "index": expr_ir(e.index)}
    if isinstance(e, n.Slice):
        return {"op": "slice", "obj": expr_ir(e.obj),
                "lo": expr_ir(e.lo) if e.lo is not None else None,
                "hi": expr_ir(e.hi) if e.hi is not None else None}
    if isinstance(e, n.Unary):
        return {"op": e.op, "arg": expr_ir(e.arg)}
    if isinstance(e, n.BoolOp):
        return {"op": e.op, "args": [expr_ir(a) for a in e.args]}
    if isinstance(e, n.Binary):
        return {"op": e.op, "left": expr_ir(e.left), "right": expr_ir(e.right)}
    if isinstance(e, n.Call):
        return {"op": "call", "fn": e.fn.value, "args": [expr_ir(a) for a in e.args]}
    raise TypeError(type(e).__name__)


# ---- blocks ---------------------------------------------------------------------------------

def _model(m: dict[str, Any]) -> dict[str, Any]:
    md = cat.MODEL_DEFAULTS
    params = {k: m[k] for k in cat.SAMPLING if k in m}
    sim = dict(cat.SIM_DEFAULTS)
    if "tokens" in m:
        sim["tokens"] = m["tokens"]
    elif "max_tokens" in params:
        hi = min(sim["tokens"][1], params["max_tokens"])
        sim["tokens"] = [min(sim["tokens"][0], hi), hi]
    if "ttft" in m:
        sim["ttft_s"] = float(m["ttft"])
    if "per_token" in m:
        sim["per_token_s"] = float(m["per_token"])
    if m.get("backend") == "sim":
        sim["max_concurrency"] = m.get("max_concurrency", sim["max_concurrency"])
        sim["replicas"] = m.get("replicas", sim["replicas"])
    autoscale = None
    if "min_replicas" in m or "max_replicas" in m:
        a = cat.AUTOSCALE_DEFAULTS
        lo = m.get("min_replicas", a["min_replicas"])
        autoscale = {"min_replicas": lo,
                     "max_replicas": m.get("max_replicas", max(lo, m.get("replicas", md["replicas"]))),
                     "target_ongoing_requests": m.get("target_ongoing_requests", a["target_ongoing_requests"])}
    url = m.get("url")
    return {
        "backend": m["backend"],
        "name": m.get("name"),
        "url": url,
        "api_key": m.get("api_key"),
        "api": m.get("api", md["api"]),
        "params": params,
        "replicas": m.get("replicas", md["replicas"]),
        "max_concurrency": m.get("max_concurrency", md["max_concurrency"]),
        "tensor_parallel": m.get("tensor_parallel", md["tensor_parallel"]),
        "pipeline_parallel": m.get("pipeline_parallel", md["pipeline_parallel"]),
        "autoscale": autoscale,
        "engine_args": {k: m[k] for k in cat.ENGINE_ARGS if k in m},
        "timeout_s": float(m["timeout"]) if "timeout" in m else None,
        "retries": m.get("retries"),
        "sim": sim,
    }


def _tool(t: dict[str, Any]) -> dict[str, Any]:
    d = cat.TOOL_DEFAULTS
    timeout = float(t.get("timeout", d["timeout_s"]))
    return {
        "kind": t["kind"],
        "timeout_s": timeout,
        "cpu_s": float(t.get("cpu", timeout)),
        "memory_bytes": int(t.get("memory", d["memory_bytes"])),
        "network": t.get("network", d["network"]),
        "max_output_bytes": int(t.get("max_output", d["max_output_bytes"])),
        "replicas": t.get("replicas", d["replicas"]),
        "max_concurrency": t.get("max_concurrency", d["max_concurrency"]),
    }


def _agent(name: str, a: dict[str, Any]) -> dict[str, Any]:
    d = cat.AGENT_DEFAULTS
    llm = a["kind"] == "llm"
    extracts = [{k: v for k, v in e.items() if k not in ("span", "ok")} for e in a["extracts"]]
    text, exit_code = cat.AGENT_FIELDS
    fields = [text, *(e["name"] for e in extracts)] + ([] if llm else [exit_code])
    return {
        "kind": a["kind"],
        "model": a.get("model") if llm else None,
        "tool": a.get("tool") if not llm else None,
        "system": a.get("system") if llm else None,
        "prompt": a.get("prompt") if llm else None,
        "input": a.get("input") if not llm else None,
        "history": a.get("history", d["history"]) if llm else False,
        "params": a["params"],
        "extracts": extracts,
        "sim": a.get("sim") if llm else None,
        "fields": fields,
        "replicas": a.get("replicas", d["replicas"]),
        "max_concurrency": a.get("max_concurrency", d["max_concurrency"]),
    }


def _states(an: Analysis) -> dict[str, Any]:
    states: dict[str, Any] = {"start": {"agent": None, "transitions": []}}
    for name in an.agents:
        states[name] = {"agent": name, "transitions": []}
    for t in an.symbols.flow.transitions:
        src = state_key(t.source)
        tgt = t.target
        states[src]["transitions"].append({
            "to": tgt.kind if tgt.kind in ("end", "fail") else tgt.name,
            "reason": tgt.reason.value if tgt.reason is not None else None,
            "when": expr_ir(t.guard) if t.guard is not None else None,
            "guard": expr_text(t.guard) if t.guard is not None else None,
        })
    return states


def _limits(lim: dict[str, Any]) -> dict[str, Any]:
    out = dict(cat.LIMIT_DEFAULTS)
    for k, v in lim.items():
        out[k + "_s" if k in ("row_timeout", "call_timeout") else k] = float(v) if k.endswith("timeout") else v
    return out


def build_ir(an: Analysis) -> dict[str, Any]:
    sym = an.symbols
    name = sym.workflow.name.value
    agents = {k: _agent(k, v) for k, v in sorted(an.agents.items())}
    row = input_schema(name, an.row_fields)
    ir: dict[str, Any] = {
        "ir_version": IR_VERSION,
        "workflow": {"name": name,
                     "description": sym.workflow.description.value if sym.workflow.description else ""},
        "input_schema": row,
        "message_schema": message_schema(name, row, agents),
        "models": {k: _model(v) for k, v in sorted(an.models.items())},
        "tools": {k: _tool(v) for k, v in sorted(an.tools.items())},
        "agents": agents,
        "states": _states(an),
        "limits": _limits(an.limits),
        "output": {"fields": [{"name": f.key.value, "expr": expr_ir(f.value)}
                              for f in (sym.output.fields if sym.output else [])]},
    }
    ir["workflow"]["source_hash"] = "sha256:" + hashlib.sha256(dumps(ir, pretty=False).encode()).hexdigest()
    return ir

