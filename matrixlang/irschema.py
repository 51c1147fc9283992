"""JSON Schemas (2020-12) of an input row and of the orchestrator message, derived from a program."""

from __future__ import annotations

from typing import Any

from . import nodes as n

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def type_schema(t: n.TypeRef) -> dict[str, Any]:
    name = t.name.value
    if name == "list":
        base: dict[str, Any] = {"type": "array", "items": type_schema(t.arg) if t.arg else {}}
    else:
        base = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
                "bool": {"type": "boolean"}, "json": {}}.get(name, {})
    if t.optional and base:
        return {"anyOf": [base, {"type": "null"}]}
    return base


def input_schema(name: str, fields: dict[str, n.TypeRef]) -> dict[str, Any]:
    return {
        "$schema": DIALECT,
        "title": f"{name} input row",
        "type": "object",
        "properties": {k: type_schema(t) for k, t in fields.items()},
        "required": [k for k, t in fields.items() if not t.optional],
        "additionalProperties": True,
        "x-id-field": "id" if "id" in fields else None,
    }


def message_schema(name: str, row: dict[str, Any], agents: dict[str, dict]) -> dict[str, Any]:
    """The orchestrator message that carries one row through the agents (see docs/ir.md)."""
    names = sorted(agents)
    entry_inline = {"type": "object", "required": ["agent", "text"], "additionalProperties": False,
                    "properties": {"agent": {"enum": names}, "text": {"type": "string"}}}
    entry_ref = {"type": "object", "required": ["agent", "ref", "bytes"], "additionalProperties": False,
                 "properties": {"agent": {"enum": names},
                                "ref": {"type": "string", "description": "object id in Ray's object store"},
                                "bytes": {"type": "integer", "minimum": 0},
                                "preview": {"type": "string"}}}
    values = {}
    for a, spec in sorted(agents.items()):
        props: dict[str, Any] = {"entry": {"type": ["integer", "null"],
                                           "description": "index of this agent's latest history entry"}}
        for e in spec["extracts"]:
            props[e["name"]] = {"type": ["string", "null"]} if e["kind"] == "regex" else {}
        props["exit_code"] = {"type": ["integer", "null"]}
        values[a] = {"type": "object", "properties": props}
    usage = {"type": "object", "properties": {k: {"type": "integer", "minimum": 0}
                                              for k in ("prompt_tokens", "completion_tokens", "calls")}}
    row_body = {k: v for k, v in row.items() if k not in ("$schema", "title")}
    return {
        "$schema": DIALECT,
        "title": f"{name} orchestrator message",
        "type": "object",
        "required": ["id", "row", "state", "status", "steps", "visits", "values", "history", "usage", "timing"],
        "properties": {
            "id": {"type": ["string", "integer"]},
            "row": row_body,
            "state": {"enum": ["start", *names, "end", "fail"]},
            "status": {"enum": ["running", "ok", "failed", "error"]},
            "reason": {"type": ["string", "null"]},
            "detail": {"type": ["string", "null"]},
            "steps": {"type": "integer", "minimum": 0},
            "attempt": {"type": "integer", "minimum": 0},
            "visits": {"type": "object", "properties": {a: {"type": "integer", "minimum": 0} for a in names},
                       "additionalProperties": False},
            "values": {"type": "object", "properties": values, "additionalProperties": False},
            "history": {"type": "array", "items": {"oneOf": [entry_inline, entry_ref]}},
            "usage": {"type": "object", "properties": dict.fromkeys(names, usage), "additionalProperties": False},
            "timing": {"type": "object", "properties": {
                "admitted": {"type": ["number", "null"], "description": "unix time the row was admitted"},
                "finished": {"type": ["number", "null"], "description": "unix time the row finished"}}},
        },
    }
