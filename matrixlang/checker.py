"""All static checks, in order: parse → resolve → blocks → agents and templates → flow → guards → output.

`check(source)` returns an `Analysis`: the AST, the diagnostics, and the checked, evaluated values the
compiler turns into IR.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from . import catalog as cat
from . import nodes as n
from .diagnostics import Diagnostics, Label, did_you_mean, one_of
from .flowgraph import check_flow
from .parser import parse
from .resolve import Symbols, resolve
from .source import Source
from .templates import check_template, environment
from .types import ANY, INT, STR, Scope, Ty, TypeChecker, check_regex, list_of, obj
from .values import evaluate


@dataclass
class Analysis:
    source: Source
    program: n.Program
    diags: Diagnostics
    symbols: Symbols
    graph: nx.MultiDiGraph | None = None
    row_fields: dict[str, n.TypeRef] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    reads: set[tuple[str, str]] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.diags.has_errors


def check(source: Source) -> Analysis:
    diags = Diagnostics()
    program = parse(source, diags)
    sym = resolve(program, diags)
    an = Analysis(source, program, diags, sym)
    row = _input(an)
    an.models = {name: _settings(an, m.settings, cat.MODEL, f"model `{name}`", m) for name, m in sym.models.items()}
    an.tools = {name: _settings(an, t.settings, cat.TOOL, f"tool `{name}`", t) for name, t in sym.tools.items()}
    an.limits = _settings(an, sym.limits.settings, cat.LIMITS, "limits", sym.limits) if sym.limits else {}
    for name, a in sym.agents.items():
        an.agents[name] = _agent(an, a)
    scope = Scope(row, {name: _agent_type(name, a) for name, a in an.agents.items()},
                  on_read=lambda agent, fld: an.reads.add((agent, fld)), broken=frozenset(sym.broken))
    for name, a in sym.agents.items():
        for key in ("system", "prompt", "input", "sim"):
            s = next((s for s in a.settings if s.key.value == key), None)
            if s is not None and isinstance(s.value, n.Literal) and s.value.kind == "str":
                before = len(diags.items)
                try:
                    check_template(s.value, scope, diags, f"{name}.{key}")
                except RecursionError:
                    del diags.items[before:]
                    _too_deep_template(s.value, diags, f"{name}.{key}", "RecursionError")
                    continue
                if len(diags.items) == before:
                    _template_compiles(s.value, diags, f"{name}.{key}")
    an.graph = check_flow(sym, diags)
    tc = TypeChecker(scope, diags)
    if sym.flow:
        for t in sym.flow.transitions:
            if t.guard is not None:
                tc.check(t.guard)
    _output(an, tc)
    _unused(an)
    return an


def _template_compiles(lit: n.Literal, diags: Diagnostics, where: str) -> None:
    """E027 for a template that parses but that jinja cannot compile to Python (blocks nested past
    Python's limits, e.g. 240 nested `{% if %}`). Only templates with many blocks are compiled here:
    compiling is the slow part of checking a template."""
    if lit.value.count("{%") < 40:
        return
    try:
        environment().compile(lit.value)
    except (SyntaxError, RecursionError, MemoryError) as exc:
        _too_deep_template(lit, diags, where, type(exc).__name__)
    except Exception:  # noqa: BLE001 - any other template error is check_template's to report
        return


def _too_deep_template(lit: n.Literal, diags: Diagnostics, where: str, why: str) -> None:
    diags.error("E027", f"template `{where}` is nested too deeply to run ({why})", lit.span,
                "nest fewer blocks: split the template, or compute parts in a tool agent")


# ---- input ----------------------------------------------------------------------------------

def _type(an: Analysis, t: n.TypeRef) -> Ty:
    name = t.name.value
    if name not in cat.TYPES:
        an.diags.error("E020", f"unknown type `{name}`", t.name.span,
                       did_you_mean(name, cat.TYPES) or f"types are {one_of(['str', 'int', 'float', 'bool', 'json', 'list[T]'])}")
        base = ANY
    elif name == "list":
        if t.arg is None:
            an.diags.error("E020", "`list` needs its element type", t.span, "write e.g. `list[str]`")
            base = list_of(ANY)
        else:
            base = list_of(_type(an, t.arg))
    else:
        if t.arg is not None:
            an.diags.error("E020", f"`{name}` takes no element type", t.arg.span)
        base = {"str": STR, "int": INT, "float": Ty("float"), "bool": Ty("bool"), "json": ANY}[name]
    return base.opt() if t.optional else base


def _input(an: Analysis) -> Ty:
    if an.symbols.input is None:
        return ANY  # missing or unparsable (already reported): its fields are unknown, not absent
    fields: dict[str, Ty] = {}
    if an.symbols.input:
        for f in an.symbols.input.fields:
            if f.name.value not in fields:
                fields[f.name.value] = _type(an, f.type)
                an.row_fields[f.name.value] = f.type
    return obj(fields, "the input row")


# ---- blocks ---------------------------------------------------------------------------------

def _settings(an: Analysis, settings: list[n.Setting], keys: dict[str, cat.Key], where: str,
              decl: n.Node) -> dict[str, Any]:
    """Evaluate a block's settings: unknown and duplicate keys, values of the right kind."""
    out: dict[str, Any] = {}
    first: dict[str, n.Setting] = {}
    for s in settings:
        k = s.key.value
        if k not in keys:
            an.diags.error("E015", f"unknown key `{k}` in {where}", s.key.span,
                           did_you_mean(k, keys) or f"keys of {where.split(' ')[0]} are {', '.join(keys)}")
            continue
        if k in first:
            an.diags.error("E014", f"`{k}` is set twice in {where}", s.key.span,
                           "remove one of them", [Label(first[k].key.span, "first set here")])
            continue
        first[k] = s
        v = evaluate(an.diags, k, keys[k], s.value)
        if v is not None:
            out[k] = v
    if keys is cat.MODEL:
        _model_checks(an, out, first, where, decl)
    if keys is cat.TOOL:
        _enum(an, out, first, "kind", cat.TOOL_KINDS, where, decl, "tool kind")
    return out


def _enum(an: Analysis, out: dict, first: dict, key: str, allowed: tuple, where: str, decl: n.Node,
          what: str, required: bool = True) -> None:
    if key not in first:
        if not required:
            return
        name_span = getattr(decl, "name", decl).span
        an.diags.error("E016", f"{where} has no `{key}`", name_span,
                       f"add `{key} = \"{allowed[0]}\"` ({what}s: {', '.join(allowed)})")
    elif key in out and out[key] not in allowed:
        an.diags.error("E028", f"unknown {what} \"{out[key]}\"", first[key].value.span,
                       did_you_mean(out[key], allowed) or f"{what}s are {one_of(allowed)}")
        del out[key]


def _model_checks(an: Analysis, out: dict, first: dict, where: str, decl: n.Node) -> None:
    _enum(an, out, first, "backend", cat.BACKENDS, where, decl, "backend")
    backend = out.get("backend")
    if backend is None:
        return
    for k, s in first.items():
        applies = cat.MODEL[k].backends
        if applies and backend not in applies:
            an.diags.warning("W003", f"`{k}` has no effect with backend \"{backend}\"", s.key.span,
                             f"it applies to {one_of(applies)} models")
    _enum(an, out, first, "api", cat.APIS, where, decl, "api", required=False)
    if backend in ("openai", "vllm") and "name" not in first:
        an.diags.error("E016", f"{where} has no `name`", decl.name.span,
                       'add the model name the server knows, e.g. `name = "meta-llama/Llama-3.1-8B-Instruct"`')
    if "min_replicas" in out and "max_replicas" in out and out["min_replicas"] > out["max_replicas"]:
        an.diags.error("E017", "`min_replicas` is greater than `max_replicas`", first["min_replicas"].value.span)


# ---- agents ---------------------------------------------------------------------------------

def _agent(an: Analysis, a: n.Agent) -> dict[str, Any]:
    name = a.name.value
    where = f"agent `{name}`"
    out = _settings(an, a.settings, cat.AGENT, where, a)
    keys = {s.key.value: s for s in a.settings}
    sym = an.symbols
    has_model, has_tool = "model" in keys, "tool" in keys
    if has_model and has_tool:
        an.diags.error("E022", f"{where} has both `model` and `tool`", keys["tool"].key.span,
                       "an agent either calls a model or runs a tool: split it into two agents",
                       [Label(keys["model"].key.span, "`model` set here")])
    elif not has_model and not has_tool:
        an.diags.error("E021", f"{where} has neither `model` nor `tool`", a.name.span,
                       f"add `model = {next(iter(sym.models), 'MODEL')}` or `tool = {next(iter(sym.tools), 'TOOL')}`")
    kind = "tool" if has_tool and not has_model else "llm"
    out["kind"] = kind
    for key, table, other in (("model", sym.models, "tool"), ("tool", sym.tools, "model")):
        ref = out.get(key)
        if ref is None or ref in table or ref in sym.broken:
            continue
        actual = sym.kind_of(ref)
        if actual == other:
            hint = f"`{ref}` is a {other}: write `{other} = {ref}`"
        else:
            hint = did_you_mean(ref, table) or (f"{key}s are {', '.join(table)}" if table else f"declare `{key} {ref} {{ ... }}`")
        an.diags.error("E023", f"unknown {key} `{ref}`", keys[key].value.span, hint)
        del out[key]
    bad_keys = cat.TOOL_ONLY if kind == "llm" else cat.LLM_ONLY
    for k in bad_keys:
        if k in keys and not (has_model and has_tool):
            instead = {"input": "`prompt`", "prompt": "`input`", "system": "`input`", "history": None, "sim": None}[k]
            an.diags.error("E024", f"`{k}` is not allowed in a {'tool' if kind == 'tool' else 'model'} agent",
                           keys[k].key.span, f"use {instead}" if instead else
                           f"{'tool agents have no conversation' if kind == 'tool' else ''}".strip() or None)
    params: dict[str, Any] = {}
    for p in a.params:
        params.update(_settings(an, p.settings, cat.SAMPLING, f"`params` of {where}", p))
    if a.params and kind == "tool":
        an.diags.error("E024", "`params` is not allowed in a tool agent", a.params[0].span)
    out["params"] = params
    out["extracts"] = _extracts(an, a, kind)
    return out


def _extracts(an: Analysis, a: n.Agent, kind: str) -> list[dict]:
    out: list[dict] = []
    seen: dict[str, n.Extract] = {}
    for e in a.extracts:
        name = e.name.value
        if name in cat.RESERVED_FIELDS:
            *first, final = (f"`{f}`" for f in cat.RESERVED_FIELDS)
            reserved = f"{', '.join(first)} and {final}"
            an.diags.error("E026", f"`{name}` is a reserved field name of every agent", e.name.span,
                           f"choose another name for the extract ({reserved} are reserved)")
            continue
        if name in seen:
            an.diags.error("E014", f"extract `{name}` is declared twice in agent `{a.name.value}`", e.name.span,
                           labels=[Label(seen[name].name.span, "first declared here")])
            continue
        seen[name] = e
        v = e.value
        ok_call = isinstance(v, n.Call) and v.fn.value in ("regex", "json") and len(v.args) == 1 and \
            isinstance(v.args[0], n.Literal) and v.args[0].kind == "str"
        if not ok_call:
            fn = v.fn.value if isinstance(v, n.Call) else None
            hint = (did_you_mean(fn, ["regex", "json"]) if fn else None) or \
                'write `regex(r"pattern")` (first capture group) or `json("key.path")`'
            an.diags.error("E026", f"extract `{name}` must be `regex(...)` or `json(...)` with one string",
                           v.span, hint)
            out.append({"name": name, "kind": "invalid", "span": e.name.span, "ok": False})
            continue
        arg = v.args[0]
        if v.fn.value == "regex":
            ok = check_regex(an.diags, arg)
            if ok and re.compile(arg.value, re.DOTALL).groups == 0:
                an.diags.warning("W006", f"regex of extract `{name}` has no capture group: its value is the "
                                 "whole match", arg.span, "put the part you want in a group, e.g. "
                                 '`r"Answer: ([A-D])"`, or the whole pattern to keep the whole match')
            out.append({"name": name, "kind": "regex", "pattern": arg.value, "span": e.name.span, "ok": ok})
        else:
            path = [p for p in arg.value.split(".")]
            if not arg.value or any(not p for p in path):
                an.diags.error("E026", f"bad JSON path `{arg.value}`", arg.span, 'use dotted keys, e.g. `json("scores.clarity")`')
                out.append({"name": name, "kind": "invalid", "span": e.name.span, "ok": False})
                continue
            out.append({"name": name, "kind": "json", "path": path, "span": e.name.span, "ok": True})
    return out


def _agent_type(name: str, a: dict) -> Ty:
    fields: dict[str, Ty] = {"text": STR.opt()}
    for e in a["extracts"]:
        fields[e["name"]] = STR.opt() if e["kind"] == "regex" else ANY
    if a["kind"] == "tool":
        fields["exit_code"] = INT.opt()
    return obj(fields, f"agent `{name}`")


# ---- output and warnings --------------------------------------------------------------------

def _output(an: Analysis, tc: TypeChecker) -> None:
    out = an.symbols.output
    if out is None:
        return
    seen: dict[str, n.Setting] = {}
    for f in out.fields:
        k = f.key.value
        if k in cat.RESERVED_OUTPUT_FIELDS:
            an.diags.error("E046", f"`{k}` is written by the runtime and cannot be an output field", f.key.span,
                           "choose another name")
            continue
        if k in seen:
            an.diags.error("E014", f"output field `{k}` is set twice", f.key.span,
                           labels=[Label(seen[k].key.span, "first set here")])
            continue
        seen[k] = f
        tc.check(f.value)


def _unused(an: Analysis) -> None:
    sym = an.symbols
    if sym.broken:
        return  # a declaration that did not parse may be the one that reads or uses them
    codes = {d.code for d in an.diags.items}
    unknown_reads = bool(codes & {"E027", "E040", "E041"})  # a read we could not follow may be the one
    for name, a in an.agents.items():
        for e in a["extracts"]:
            if e["ok"] and not unknown_reads and (name, e["name"]) not in an.reads:
                an.diags.warning("W001", f"extract `{name}.{e['name']}` is never read", e["span"],
                                 "read it in a guard, a template or the output, or remove it")
    used = {a.get("model") for a in an.agents.values()} | {a.get("tool") for a in an.agents.values()}
    for table, kind in ((sym.models, "model"), (sym.tools, "tool")):
        for name, d in table.items():
            if name not in used and not codes & {"E017", "E021", "E022", "E023"}:  # a bad reference may be the use
                an.diags.warning("W004", f"{kind} `{name}` is never used", d.name.span,
                                 f"use it in an agent (`{kind} = {name}`) or remove it")
