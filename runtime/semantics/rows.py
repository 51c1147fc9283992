"""Input rows: parsing and validation against the IR's input_schema (the JSON Schema subset of docs/ir.md).

Supported schema forms: `{"type": string|integer|number|boolean}`, `{}` (json), `{"type": "array",
"items": T}` and `{"anyOf": [T, {"type": "null"}]}` (optional). Validation is compiled once per workflow.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
import re
from collections.abc import Callable
from typing import Any

from ..ir import IRError
from .expr import type_name


class BadRow(ValueError):
    """The row does not satisfy the input schema; the message names the field. ``row`` is what could be
    kept of it (its invalid fields set to None), when it was a JSON object."""

    def __init__(self, message: str, row: dict | None = None):
        super().__init__(message)
        self.row = row


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
MAX_DEPTH = 100   # nesting of an input row's lists and objects: deeper rows are bad input


def _too_deep(v: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and objects nest deeper than ``limit`` in ``v`` (iterative: no recursion)."""
    stack = [(v, 0)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (dict, list)):
            if d >= limit:
                return True
            stack.extend((y, d + 1) for y in (x.values() if isinstance(x, dict) else x))
    return False


def _finite_float(text: str) -> float:
    v = float(text)
    if math.isinf(v):
        raise BadRow(f"number {text} is out of range (JSON numbers must be finite)")
    return v


def _no_constant(name: str) -> Any:
    raise BadRow(f"row is not valid JSON: {name} is not a JSON value")


def _lone_surrogate(v: Any) -> str | None:
    """The first string of ``v`` (keys too) that holds a lone surrogate escape, or None."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"\\u{ord(v[e.start]):04x}"
        return None
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        bad = _lone_surrogate(k) or _lone_surrogate(x)
        if bad:
            return bad
    return None


def _drop_lone_surrogates(row: dict) -> None:
    """BadRow, naming the first field whose name or value holds a lone surrogate, with those fields set
    to None (a name that holds one is dropped); nothing when there is none."""
    first = None
    for name in list(row):
        bad = _lone_surrogate(name) or _lone_surrogate(row[name])
        if bad:
            first = first or f"field {name!r}: a lone surrogate {bad} is not valid Unicode text"
            if _lone_surrogate(name):
                del row[name]
            else:
                row[name] = None
    if first:
        raise BadRow(first, row)


_SCALARS = (str, int, bool, type(None))


def _plain(v: Any, where: str) -> Any:
    """A value of a columnar row (Parquet, Arrow) as JSON data: dates and times as ISO 8601 text,
    decimals as numbers, binary as base64 text, map entries as ``[key, value]`` pairs; BadRow for a
    number JSON cannot hold (NaN, ±Infinity)."""
    if isinstance(v, _SCALARS):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise BadRow(f"field {where}: {v} is not a JSON number")
        return v
    if isinstance(v, dict):
        return {str(k): _plain(x, f"{where}.{k}") for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, datetime.timedelta):
        return v.total_seconds()
    if isinstance(v, decimal.Decimal):
        return _plain(int(v) if v == v.to_integral_value() else float(v), where)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    raise BadRow(f"field {where}: a {type(v).__name__} is not a JSON value")


def plain_row(row: dict) -> dict:
    """A copy of a columnar row with every value made JSON data (:func:`_plain`). On failure every such
    field is set to None and BadRow names the first."""
    out: dict = {}
    error: BadRow | None = None
    for k, v in row.items():
        name = str(k)
        try:
            out[name] = v if isinstance(v, _SCALARS) else _plain(v, f"'{name}'")
        except BadRow as e:
            out[name] = None
            error = error or e
    if error is not None:
        error.row = out
        raise error
    return out


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
        """The row object from JSON text (UTF-8 when bytes) or a dict (a Parquet or dataset row: copied,
        its values made JSON data by :func:`plain_row`); BadRow if it is not a JSON object of valid
        Unicode text and finite numbers."""
        if isinstance(raw, (bytes, bytearray)):
            try:
                raw = bytes(raw).decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadRow(f"row is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
        if isinstance(raw, str):
            text = raw
            try:
                raw = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
            except BadRow:
                raise
            except RecursionError:
                raise BadRow("row is nested too deeply to parse") from None
            except ValueError as e:
                raise BadRow(f"row is not valid JSON: {e}") from None
            if _SURROGATE_ESCAPE.search(text) and isinstance(raw, dict):
                _drop_lone_surrogates(raw)
            if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(raw):
                raise BadRow(f"row is nested deeper than {MAX_DEPTH} levels")
            if not isinstance(raw, dict):
                raise BadRow(f"row must be a JSON object, got {type_name(raw)}")
            return raw
        if not isinstance(raw, dict):
            raise BadRow(f"row must be a JSON object, got {type_name(raw)}")
        return plain_row(raw)

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

    def own_id(self, row: dict | None) -> str | int | None:
        """The row's id field when the schema has one and it is a string or integer, else None."""
        if self.id_field and isinstance(row, dict):
            v = row.get(self.id_field)
            if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
                return v
        return None

    def row_id(self, row: dict | None, position: int) -> str | int:
        """The row's own id (:meth:`own_id`), else its position."""
        v = self.own_id(row)
        return position if v is None else v
