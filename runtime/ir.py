"""Loading and structural checking of the matrixlang IR (docs/ir.md), the runtime's only input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .irtypes import IRError, ModelSpec, ToolSpec, parse_models, parse_tools
from .names import FINAL_STATES, RESERVED_FIELDS

SUPPORTED_MAJOR = 1
TOP_LEVEL_KEYS = (
    "ir_version", "workflow", "input_schema", "models", "tools", "agents", "states", "limits", "output",
)
FINAL_TARGETS = FINAL_STATES

__all__ = ["IRError", "ModelSpec", "ToolSpec", "check_ir", "load_ir", "load_ir_specs"]


def load_ir(obj: dict | str | Path) -> dict:
    """Return the IR as a dict from a dict, JSON text or a file path; check its version and structure.

    A `str` starting with `{` (after whitespace) is JSON text, any other `str` is a path.
    Raises IRError with a message naming the offending key.
    """
    return load_ir_specs(obj)[0]


def load_ir_specs(obj: dict | str | Path) -> tuple[dict, dict[str, ModelSpec], dict[str, ToolSpec]]:
    """As :func:`load_ir`, with the IR's models and tools parsed (the typed objects the runtime reads)."""
    if isinstance(obj, Path) or (isinstance(obj, str) and not obj.lstrip().startswith("{")):
        path = Path(obj)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise IRError(f"cannot read IR file {str(path)!r}: {e.strerror or e}") from e
        ir = _parse(text, f"IR file {str(path)!r}")
    elif isinstance(obj, str):
        ir = _parse(obj, "IR text")
    elif isinstance(obj, dict):
        ir = obj
    else:
        raise IRError(f"IR must be a dict, JSON text or a path, got {type(obj).__name__}")
    models, tools = check_ir(ir)
    return ir, models, tools


def _parse(text: str, what: str) -> dict:
    try:
        ir = json.loads(text)
    except json.JSONDecodeError as e:
        raise IRError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(ir, dict):
        raise IRError(f"{what} must be a JSON object, got {type(ir).__name__}")
    return ir


def check_ir(ir: dict) -> tuple[dict[str, ModelSpec], dict[str, ToolSpec]]:
    """Check the IR's version and the cross-references the runtime relies on; raise IRError.
    Returns its models and tools, parsed."""
    version = ir.get("ir_version")
    if not isinstance(version, str):
        raise IRError(f"missing or non-string 'ir_version' (got {version!r}); this runtime reads IR 1.x")
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) != SUPPORTED_MAJOR:
        raise IRError(f"unsupported ir_version {version!r}: this runtime reads IR {SUPPORTED_MAJOR}.x")
    missing = [k for k in TOP_LEVEL_KEYS if k not in ir]
    if missing:
        raise IRError(f"IR lacks top-level key(s): {', '.join(missing)}")
    wf = _obj(ir, "workflow")
    for key in ("name", "source_hash"):
        if not isinstance(wf.get(key), str):
            raise IRError(f"workflow.{key} must be a string")
    schema = _obj(ir, "input_schema")
    if not isinstance(schema.get("properties", {}), dict):
        raise IRError("input_schema.properties must be an object")
    models, tools = parse_models(ir), parse_tools(ir)
    agents, states = _obj(ir, "agents"), _obj(ir, "states")
    for name, agent in agents.items():
        _check_agent(name, agent, models, tools)
    _check_states(states, agents)
    limits = _obj(ir, "limits")
    for key in ("max_steps", "row_timeout_s"):
        if not isinstance(limits.get(key), (int, float)) or isinstance(limits.get(key), bool):
            raise IRError(f"limits.{key} must be a number")
    for key in ("trials", "until_ok"):         # IR 1.2; absent: the defaults
        v = limits.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise IRError(f"limits.{key} must be an integer >= 1 or null, got {v!r}")
    fields = _obj(ir, "output").get("fields")
    if not isinstance(fields, list) or not all(
        isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("expr"), dict)
        for f in fields
    ):
        raise IRError("output.fields must be a list of {name, expr}")
    return models, tools


def _obj(parent: dict, key: str, where: str = "") -> dict:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise IRError(f"{where}{key} must be an object, got {type(value).__name__}")
    return value


def _check_agent(name: str, agent: Any, models: dict, tools: dict) -> None:
    if name in FINAL_TARGETS or name == "start":
        raise IRError(f"agent name {name!r} is reserved")
    if not isinstance(agent, dict):
        raise IRError(f"agents.{name} must be an object")
    kind = agent.get("kind")
    if kind == "llm":
        if agent.get("model") not in models:
            raise IRError(f"agents.{name}.model {agent.get('model')!r} is not a key of models")
    elif kind == "tool":
        if agent.get("tool") not in tools:
            raise IRError(f"agents.{name}.tool {agent.get('tool')!r} is not a key of tools")
    else:
        raise IRError(f"agents.{name}.kind must be 'llm' or 'tool', got {kind!r}")
    for key in ("system", "prompt", "input", "sim"):
        if agent.get(key) is not None and not isinstance(agent[key], str):
            raise IRError(f"agents.{name}.{key} must be a template string or null")
    extracts = agent.get("extracts", [])
    if not isinstance(extracts, list):
        raise IRError(f"agents.{name}.extracts must be a list")
    for ex in extracts:
        if not isinstance(ex, dict) or not isinstance(ex.get("name"), str):
            raise IRError(f"agents.{name}.extracts entries must be objects with a name")
        if ex["name"] in RESERVED_FIELDS:
            raise IRError(f"agents.{name}: an extract may not be named {ex['name']!r} "
                          f"(reserved: {', '.join(RESERVED_FIELDS)})")
        if ex.get("kind") == "regex":
            if not isinstance(ex.get("pattern"), str):
                raise IRError(f"agents.{name} extract {ex['name']!r}: pattern must be a string")
        elif ex.get("kind") == "json":
            if not isinstance(ex.get("path"), list):
                raise IRError(f"agents.{name} extract {ex['name']!r}: path must be a list")
        else:
            raise IRError(f"agents.{name} extract {ex['name']!r}: kind must be regex or json")


def _check_states(states: dict, agents: dict) -> None:
    if "start" not in states:
        raise IRError("states lacks 'start'")
    for name, state in states.items():
        if not isinstance(state, dict) or not isinstance(state.get("transitions"), list):
            raise IRError(f"states.{name} must be an object with a transitions list")
        if name != "start" and (name not in agents or state.get("agent") != name):
            raise IRError(f"states.{name} does not name an agent (agent={state.get('agent')!r})")
        for i, tr in enumerate(state["transitions"]):
            where = f"states.{name}.transitions[{i}]"
            if not isinstance(tr, dict):
                raise IRError(f"{where} must be an object")
            to = tr.get("to")
            if to not in FINAL_TARGETS and to not in agents:
                raise IRError(f"{where}.to {to!r} is neither end, fail nor an agent")
            if to in agents and to not in states:
                raise IRError(f"{where}.to {to!r} has no state")
            if tr.get("when") is not None and not isinstance(tr["when"], dict):
                raise IRError(f"{where}.when must be an expression object or null")
    for name in agents:
        if name not in states:
            raise IRError(f"agent {name!r} has no state in states")
