"""Setting values: check that a block value is of the kind its key takes, and turn it into data."""

from __future__ import annotations

import re
from typing import Any

from . import nodes as n
from .catalog import DURATION_UNITS, SIZE_UNITS, Key
from .diagnostics import Diagnostics, did_you_mean

_KIND_WORDS = {
    "str": "a string", "int": "a whole number", "number": "a number", "bool": "`true` or `false`",
    "duration": "a duration such as `250ms`, `10s` or `5m`", "size": "a size such as `512B`, `64KB` or `256MB`",
    "range": "a range such as `200..800`", "template": "a string (a jinja2 template)",
    "url": 'a URL string, a list of URLs, or `env("VAR", "default")`', "secret": '`env("VAR")`',
    "str_or_list": "a string or a list of strings", "model": "the name of a model", "tool": "the name of a tool",
}


def describe(e: n.Expr) -> str:
    if isinstance(e, n.Literal):
        if e.kind == "quantity":
            return f"`{e.value[0]}{e.value[1]}`"
        return {"str": "a string", "int": "a whole number", "float": "a number with a fraction",
                "bool": "a boolean", "null": "null"}[e.kind]
    if isinstance(e, n.ListExpr):
        return "a list"
    if isinstance(e, n.RangeExpr):
        return "a range"
    if isinstance(e, n.Var):
        return f"the name `{e.name}`"
    if isinstance(e, n.Call):
        return f"a call to `{e.fn.value}`"
    return "an expression"


def _wrong(diags: Diagnostics, key: str, kind: str, e: n.Expr, help: str | None = None) -> None:
    diags.error("E017", f"`{key}` takes {_KIND_WORDS.get(kind, kind)}, not {describe(e)}", e.span, help)


# How people spell units that `.mx` writes otherwise.
UNIT_SPELLINGS = {
    "sec": "s", "secs": "s", "second": "s", "seconds": "s", "min": "m", "mins": "m", "minute": "m",
    "minutes": "m", "hr": "h", "hrs": "h", "hour": "h", "hours": "h", "msec": "ms", "millis": "ms",
    "b": "B", "kb": "KB", "k": "KB", "mb": "MB", "m": "MB", "gb": "GB", "g": "GB", "kib": "KiB", "mib": "MiB",
    "gib": "GiB",
}


MAX_SECONDS = 365 * 24 * 3600.0   # durations: the runtime's timers and the sandbox's limits take these
MAX_BYTES = 1024**5               # sizes (the sandbox's address-space limit must fit its kernel's)


def quantity(diags: Diagnostics, e: n.Literal, units: dict[str, float], what: str,
             allow_zero: bool = False) -> float | None:
    """The value of a duration or size in seconds or bytes; zero only where ``allow_zero`` (a simulated
    latency may be zero, a timeout or a limit may not)."""
    num, unit = e.value
    if unit not in units:
        other = DURATION_UNITS if units is SIZE_UNITS else SIZE_UNITS
        if unit in other:
            hint = f"this is a {'duration' if other is DURATION_UNITS else 'size'}; a {what} is written " + \
                ("like `250ms`, `10s`, `5m`" if what == "duration" else "like `512B`, `64KB`, `256MB`")
        elif UNIT_SPELLINGS.get(unit.lower()) in units:
            hint = f"write `{num}{UNIT_SPELLINGS[unit.lower()]}`"
        else:
            hint = did_you_mean(unit, units) or f"{what} units are {', '.join(units)}"
        diags.error("E018", f"unknown {what} unit `{unit}` in `{num}{unit}`", e.span, hint)
        return None
    if num < 0:
        diags.error("E018", f"a {what} cannot be negative", e.span)
        return None
    value = num * units[unit]
    if (value <= 0 and not (allow_zero and value == 0)) or (what == "size" and 0 < value < 1):
        diags.error("E018", f"a {what} must be more than zero, not `{num}{unit}`", e.span,
                    "leave the key out for its default")
        return None
    top = MAX_SECONDS if what == "duration" else MAX_BYTES
    if value > top:
        shown = "365 days" if what == "duration" else "1 PiB (1024**5 bytes)"
        hint = ("write a duration the run can wait, like `30s`, `10m` or `2h`" if what == "duration" else
                "write a size the machine can hold, like `256MB` or `4GB`")
        diags.error("E018", f"`{num}{unit}` is more than any {what} the runtime takes (at most {shown})", e.span,
                    hint)
        return None
    return value


def evaluate(diags: Diagnostics, key: str, spec: Key, e: n.Expr) -> Any:
    """The value of a setting as data, or None after reporting why it is not of the right kind."""
    kind = spec.kind
    if kind in ("str", "template", "backend", "tool_kind", "api"):
        if isinstance(e, n.Literal) and e.kind == "str":
            return e.value
        return _wrong(diags, key, "str" if kind != "template" else kind, e)
    if kind in ("int", "number"):
        if isinstance(e, n.Literal) and e.kind in ("int", "float") and not (kind == "int" and e.kind == "float"):
            if spec.min is not None and e.value < spec.min:
                diags.error("E017", f"`{key}` must be at least {spec.min:g}, not {e.value}", e.span)
                return None
            return e.value
        if isinstance(e, n.Literal) and e.kind == "quantity":
            return _wrong(diags, key, kind, e, "a plain number has no unit")
        return _wrong(diags, key, kind, e)
    if kind == "bool":
        if isinstance(e, n.Literal) and e.kind == "bool":
            return e.value
        hint = "write `true` or `false` without quotes" if isinstance(e, n.Literal) and e.kind == "str" else None
        if isinstance(e, n.Var) and e.name.lower() in ("true", "false"):
            hint = f"write `{e.name.lower()}` in lower case"
        return _wrong(diags, key, kind, e, hint)
    if kind in ("duration", "size"):
        units = DURATION_UNITS if kind == "duration" else SIZE_UNITS
        if isinstance(e, n.Literal) and e.kind == "quantity":
            return quantity(diags, e, units, kind, allow_zero=spec.zero)
        if isinstance(e, n.Literal) and e.kind in ("int", "float"):
            example = f"{e.value}s" if kind == "duration" else f"{e.value}MB"
            diags.error("E018", f"`{key}` needs a unit", e.span, f"write e.g. `{example}`")
            return None
        quoted = isinstance(e, n.Literal) and e.kind == "str" and re.fullmatch(r"\d+(\.\d+)?[A-Za-z]+", e.value)
        return _wrong(diags, key, kind, e, f"write it without quotes: `{e.value}`" if quoted else None)
    if kind == "range":
        if isinstance(e, n.RangeExpr):
            lo, hi = e.lo, e.hi
            if not all(isinstance(x, n.Literal) and x.kind == "int" for x in (lo, hi)):
                diags.error("E019", "a range's ends must be whole numbers", e.span, "e.g. `200..800`")
                return None
            if lo.value > hi.value:
                diags.error("E019", f"empty range: {lo.value} is greater than {hi.value}", e.span,
                            f"write `{hi.value}..{lo.value}`")
                return None
            if spec.min is not None and lo.value < spec.min:
                diags.error("E019", f"`{key}` must start at {spec.min:g} or more", e.span)
                return None
            return [lo.value, hi.value]
        if isinstance(e, n.Literal) and e.kind == "int":
            return [e.value, e.value]
        if isinstance(e, n.Binary) and e.op == "-" and all(
                isinstance(x, n.Literal) and x.kind == "int" for x in (e.left, e.right)):
            return _wrong(diags, key, kind, e, f"write the range as `{e.left.value}..{e.right.value}`")
        return _wrong(diags, key, kind, e)
    if kind == "str_or_list":
        if isinstance(e, n.Literal) and e.kind == "str":
            return [e.value]
        if isinstance(e, n.ListExpr) and all(isinstance(i, n.Literal) and i.kind == "str" for i in e.items):
            return [i.value for i in e.items]
        return _wrong(diags, key, kind, e)
    if kind in ("url", "secret"):
        if isinstance(e, n.Call) and e.fn.value == "env":
            return env_ref(diags, e)
        if kind == "secret":
            hint = 'put the key in an environment variable and write `api_key = env("OPENAI_API_KEY")`'
            diags.error("E017", "`api_key` must come from the environment, never from the file", e.span, hint)
            return None
        if isinstance(e, n.Literal) and e.kind == "str":
            return [u.strip() for u in e.value.split(",") if u.strip()]
        if isinstance(e, n.ListExpr) and all(isinstance(i, n.Literal) and i.kind == "str" for i in e.items):
            return [i.value for i in e.items]
        return _wrong(diags, key, kind, e)
    if kind in ("model", "tool"):
        if isinstance(e, n.Var):
            return e.name
        hint = f"write the name without quotes: `{key} = {e.value}`" if (
            isinstance(e, n.Literal) and e.kind == "str") else None
        return _wrong(diags, key, kind, e, hint)
    raise AssertionError(kind)


def env_ref(diags: Diagnostics, e: n.Call) -> dict | None:
    args = e.args
    if not 1 <= len(args) <= 2 or not all(isinstance(a, n.Literal) and a.kind == "str" for a in args):
        diags.error("E044", '`env` takes a variable name and an optional default, both strings', e.span,
                    'e.g. `env("LLM_URL", "http://127.0.0.1:8000/v1")`')
        return None
    return {"env": args[0].value, "default": args[1].value if len(args) > 1 else None}
