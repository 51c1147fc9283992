"""Input rows: parsing and validation against the IR's input_schema (the JSON Schema subset of docs/ir.md).

Supported schema forms: `{"type": string|integer|number|boolean}`, `{}` (json), `{"type": "array",
"items": T}` and `{"anyOf": [T, {"type": "null"}]}` (optional). Validation is compiled once per workflow.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .expr import type_name
from .ir import IRError


class BadRow(ValueError):
    """The row does not satisfy the input schema; the message names the field."""


# A checker returns the (possibly normalised) value, or raises BadRow with a message relative to `where`.
Checker = Callable[[Any, str], Any]


def _scalar(expected: str, ok: Callable[[Any], bool]) -> Checker:
    def check(v: Any, where: str) -> Any:
        if not ok(v):
            raise BadRow(f"field {where}: expected {expected}, got {type_name(v)}")
        return v

    return check


def _check_int(v: Any, where: str) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, float) and v.is_integer():  # JSON Schema: 3.0 is an integer
        return int(v)
    raise BadRow(f"field {where}: expected int, got {type_name(v)}")


def _type_label(schema: dict) -> str:
    if "anyOf" in schema:
        inner = [s for s in schema["anyOf"] if s != {"type": "null"}]
        return (_type_label(inner[0]) if inner else "null") + "?"
    t = schema.get("type")
    if t == "array":
        return f"list[{_type_label(schema.get('items', {}))}]"
    return {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}.get(t, "json")


def compile_schema(schema: Any, where: str = "input_schema") -> Checker:
    """Compile one property schema into a checker; IRError on forms outside the supported subset."""
    if not isinstance(schema, dict):
        raise IRError(f"{where}: schema must be an object")
    if "anyOf" in schema:
        alts = schema["anyOf"]
        inner = [s for s in alts if s != {"type": "null"}] if isinstance(alts, list) else []
        if not isinstance(alts, list) or len(inner) != 1 or len(alts) != 2:
            raise IRError(f"{where}: anyOf must be [T, {{\"type\": \"null\"}}]")
        check_inner = compile_schema(inner[0], where)

        def optional(v: Any, at: str) -> Any:
            return None if v is None else check_inner(v, at)

        return optional
    t = schema.get("type")
    if t is None:
        return lambda v, at: v
    if t == "string":
        return _scalar("str", lambda v: isinstance(v, str))
    if t == "integer":
        return _check_int
    if t == "number":
        return _scalar("float", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    if t == "boolean":
        return _scalar("bool", lambda v: isinstance(v, bool))
    if t == "array":
        label = _type_label(schema)
        check_item = compile_schema(schema.get("items", {}), where)

        def array(v: Any, at: str) -> Any:
            if not isinstance(v, list):
                raise BadRow(f"field {at}: expected {label}, got {type_name(v)}")
            return [check_item(x, f"{at[:-1]}[{i}]'") for i, x in enumerate(v)]

        return array
    raise IRError(f"{where}: unsupported schema type {t!r}")


class RowValidator:
    """Parses and checks one input row; `validate` returns the row with absent optionals set to None."""

    __slots__ = ("id_field", "_fields", "_required")

    def __init__(self, input_schema: dict) -> None:
        props = input_schema.get("properties", {})
        self._required = frozenset(input_schema.get("required", []))
        self._fields = [(name, compile_schema(s, f"input_schema.properties.{name}")) for name, s in props.items()]
        self.id_field: str | None = input_schema.get("x-id-field")

    def parse(self, raw: str | bytes | dict) -> dict:
        """The row object from JSON text or a dict (shallow-copied); BadRow if not a JSON object."""
        if isinstance(raw, (str, bytes, bytearray)):
            try:
                raw = json.loads(raw)
            except ValueError as e:
                raise BadRow(f"row is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise BadRow(f"row must be a JSON object, got {type_name(raw)}")
        return dict(raw)

    def validate(self, row: dict) -> dict:
        """Check every declared field (in schema order) in place and set absent optionals to None.

        On failure every invalid field is set to None (so no output carries a value that breaks the
        schema) and BadRow names the first one.
        """
        error: BadRow | None = None
        for name, check in self._fields:
            if name not in row:
                row[name] = None
                if name in self._required and error is None:
                    error = BadRow(f"field '{name}': missing")
                continue
            try:
                row[name] = check(row[name], f"'{name}'")
            except BadRow as e:
                row[name] = None
                error = error or e
        if error is not None:
            raise error
        return row

    def row_id(self, row: dict | None, position: int) -> str | int:
        """The row's id field when the schema has one and it is a string or integer, else the position."""
        if self.id_field and isinstance(row, dict):
            v = row.get(self.id_field)
            if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
                return v
        return position
