"""Guard and output expressions (docs/ir.md "Expressions"): IR trees compiled once into closures.

A compiled expression is `fn(scope) -> value`, where `scope.var(name)` returns a context name
(`row`, `history`, `last`, `turns`, `visits` or an agent). Null semantics: `==`/`!=` compare normally;
`< <= > >= in not_in contains matches` with a null operand are false; arithmetic and functions with a
null operand give null; slicing null gives null, and a null slice bound is an omitted one (Python). Values that cannot be combined (a string with a number, ...) raise ExprError,
which the engine turns into the row failure `guard_error`. Booleans are not numbers here (JSON semantics).
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from ..ir import IRError
from ..names import KINDS
from .extract import BoundedRegex


class ExprError(Exception):
    """An expression could not be evaluated on this row's values."""


class Scope(Protocol):
    def var(self, name: str) -> Any: ...


Compiled = Callable[[Scope], Any]
BINARY_OPS = ("==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "in", "not_in", "contains", "matches")


def type_name(v: Any) -> str:
    """The JSON type name of a value, for error messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) is not isinstance(b, bool):
        return False
    return a == b


def _ordering(op: Callable[[Any, Any], bool], sym: str) -> Callable[[Any, Any], bool]:
    def cmp(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return False
        if isinstance(a, bool) is not isinstance(b, bool):
            raise ExprError(f"cannot compare {type_name(a)} with {type_name(b)} using {sym}")
        try:
            return op(a, b)
        except TypeError:
            raise ExprError(f"cannot compare {type_name(a)} with {type_name(b)} using {sym}") from None

    return cmp


def _add(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    if (_is_num(a) and _is_num(b)) or (isinstance(a, str) and isinstance(b, str)) or (
        isinstance(a, list) and isinstance(b, list)
    ):
        return a + b
    raise ExprError(f"cannot add {type_name(a)} and {type_name(b)}")


def _numeric(op: Callable[[Any, Any], Any], sym: str) -> Callable[[Any, Any], Any]:
    def arith(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        if not (_is_num(a) and _is_num(b)):
            raise ExprError(f"cannot apply {sym} to {type_name(a)} and {type_name(b)}")
        try:
            return op(a, b)
        except ZeroDivisionError:
            raise ExprError(f"division by zero in {sym}") from None
        except OverflowError:
            raise ExprError(f"numeric overflow in {sym}") from None

    return arith


def _member(item: Any, container: Any) -> bool:
    if isinstance(container, str):
        if not isinstance(item, str):
            raise ExprError(f"cannot test whether {type_name(item)} is in a string")
        return item in container
    if isinstance(container, list):
        return any(_eq(item, x) for x in container)
    if isinstance(container, dict):
        if not isinstance(item, str):
            raise ExprError(f"cannot test whether {type_name(item)} is a key of an object")
        return item in container
    raise ExprError(f"cannot test membership in {type_name(container)}")


def _in(a: Any, b: Any) -> bool:
    return a is not None and b is not None and _member(a, b)


def _not_in(a: Any, b: Any) -> bool:
    return a is not None and b is not None and not _member(a, b)


def _contains(a: Any, b: Any) -> bool:
    return a is not None and b is not None and _member(b, a)


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "==": _eq,
    "!=": lambda a, b: not _eq(a, b),
    "<": _ordering(operator.lt, "<"),
    "<=": _ordering(operator.le, "<="),
    ">": _ordering(operator.gt, ">"),
    ">=": _ordering(operator.ge, ">="),
    "+": _add,
    "-": _numeric(operator.sub, "-"),
    "*": _numeric(operator.mul, "*"),
    "/": _numeric(operator.truediv, "/"),
    "%": _numeric(operator.mod, "%"),
    "in": _in,
    "not_in": _not_in,
    "contains": _contains,
}


def to_str(v: Any) -> str:
    """`str(x)` of the language: strings unchanged, JSON spelling for booleans, arrays and objects."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if _is_num(v):
        return repr(v) if isinstance(v, float) else str(v)
    return json.dumps(v, ensure_ascii=False)


def kind_of(v: Any) -> str | None:
    """The language's kind of a value (`names.KINDS`), None for null."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    if isinstance(v, (list, tuple)):
        return "list"
    return "obj" if isinstance(v, dict) else type(v).__name__


@dataclass(frozen=True, slots=True)
class Function:
    """One function of the language: its implementation and its signature, which the checker reads
    (matrixlang/types.py). `params`: per parameter, the kinds of value it accepts (a null argument
    always gives null); `returns`: the kind of the result. `impl` is called only with accepted kinds."""

    name: str
    impl: Callable[..., Any]
    params: tuple[tuple[str, ...], ...]
    returns: str
    doc: str

    @property
    def arity(self) -> int:
        return len(self.params)

    def __call__(self, *args: Any) -> Any:
        if any(a is None for a in args):
            return None
        for a, kinds in zip(args, self.params, strict=True):
            if kind_of(a) not in kinds:
                raise ExprError(f"{self.name}() of {type_name(a)}")
        return self.impl(*args)


def _fn_int(v: int | float | str) -> int:
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    try:
        f = float(v)
        if not math.isfinite(f):
            raise ValueError
        return int(f)
    except ValueError:
        raise ExprError(f"int() of {v!r}") from None


def _fn_float(v: int | float | str) -> float:
    try:
        return float(v)
    except (ValueError, OverflowError):
        raise ExprError(f"float() of {v!r}") from None


_NUMERIC_OR_STR = ("int", "float", "str")
FUNCTIONS: dict[str, Function] = {f.name: f for f in (
    Function("len", len, (("str", "list", "obj"),), "int", "length of a string, list or object"),
    Function("lower", str.lower, (("str",),), "str", "a string in lower case"),
    Function("upper", str.upper, (("str",),), "str", "a string in upper case"),
    Function("strip", str.strip, (("str",),), "str", "a string without leading and trailing whitespace"),
    Function("int", _fn_int, (_NUMERIC_OR_STR,), "int",
             'a number or numeric string as an integer, truncated (`int("3.0")` is 3)'),
    Function("float", _fn_float, (_NUMERIC_OR_STR,), "float", "a number or numeric string as a float"),
    Function("str", to_str, (KINDS,), "str", "a value as a string: JSON spelling for booleans, lists, objects"),
)}
"""Every function guards and output fields may call; the checker's table too."""


def get_attr(obj: Any, name: str) -> Any:
    """`obj.name`: a key of an object, null when obj is null, not an object, or lacks the key."""
    if isinstance(obj, dict):
        try:
            return obj[name]
        except KeyError:
            return None
    return None


def get_index(obj: Any, idx: Any) -> Any:
    """`obj[idx]`: list/string index (negative from the end) or object key; null when out of range."""
    if obj is None or idx is None:
        return None
    if isinstance(obj, (list, str)):
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise ExprError(f"cannot index {type_name(obj)} with {type_name(idx)}")
        return obj[idx] if -len(obj) <= idx < len(obj) else None
    if isinstance(obj, dict):
        if not isinstance(idx, str):
            raise ExprError(f"cannot index object with {type_name(idx)}")
        return get_attr(obj, idx)
    raise ExprError(f"cannot index {type_name(obj)}")


def compile_expr(node: Any, names: Collection[str] | None = None) -> Compiled:
    """Compile an IR expression tree into a closure; raise IRError when the tree is malformed.

    `names`, when given, are the context names a `var` node may use.
    """
    if not isinstance(node, dict) or not isinstance(node.get("op"), str):
        raise IRError(f"expression node must be an object with an 'op', got {node!r}")
    op = node["op"]
    try:
        if op == "lit":
            value = node["value"]
            return lambda s: value
        if op == "list":
            items = [compile_expr(i, names) for i in node["items"]]
            return lambda s: [f(s) for f in items]
        if op == "var":
            name = node["name"]
            if names is not None and name not in names:
                raise IRError(f"unknown name {name!r} in expression")
            return lambda s: s.var(name)
        if op == "attr":
            obj, attr = compile_expr(node["obj"], names), node["name"]
            if not isinstance(attr, str):
                raise IRError(f"attr name must be a string, got {attr!r}")
            return lambda s: get_attr(obj(s), attr)
        if op == "index":
            obj, index = compile_expr(node["obj"], names), compile_expr(node["index"], names)
            return lambda s: get_index(obj(s), index(s))
        if op == "slice":
            return _compile_slice(node, names)
        if op == "not":
            arg = compile_expr(node["arg"], names)
            return lambda s: not arg(s)
        if op == "neg":
            return _compile_neg(compile_expr(node["arg"], names))
        if op in ("and", "or"):
            args = [compile_expr(a, names) for a in node["args"]]
            if not args:
                raise IRError(f"{op} needs arguments")
            if op == "and":
                return lambda s: all(f(s) for f in args)
            return lambda s: any(f(s) for f in args)
        if op == "matches":
            return _compile_matches(node, names)
        if op in _BINARY:
            fn, left, right = _BINARY[op], compile_expr(node["left"], names), compile_expr(node["right"], names)
            return lambda s: fn(left(s), right(s))
        if op == "call":
            return _compile_call(node, names)
    except KeyError as e:
        raise IRError(f"expression node {op!r} lacks key {e.args[0]!r}") from None
    raise IRError(f"unknown expression op {op!r}")


def _compile_slice(node: dict, names: Collection[str] | None) -> Compiled:
    obj = compile_expr(node["obj"], names)
    lo = None if node.get("lo") is None else compile_expr(node["lo"], names)
    hi = None if node.get("hi") is None else compile_expr(node["hi"], names)

    def bound(fn: Compiled | None, s: Scope) -> int | None:
        v = None if fn is None else fn(s)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ExprError(f"slice bounds must be integers, got {type_name(v)}")
        return v

    def slice_(s: Scope) -> Any:
        v = obj(s)
        if v is None:
            return None
        if not isinstance(v, (str, list)):
            raise ExprError(f"cannot slice {type_name(v)}")
        return v[bound(lo, s):bound(hi, s)]

    return slice_


def _compile_neg(arg: Compiled) -> Compiled:
    def neg(s: Scope) -> Any:
        v = arg(s)
        if v is None:
            return None
        if not _is_num(v):
            raise ExprError(f"cannot negate {type_name(v)}")
        return -v

    return neg


def _compile_matches(node: dict, names: Collection[str] | None) -> Compiled:
    right = node["right"]
    if not (isinstance(right, dict) and right.get("op") == "lit" and isinstance(right.get("value"), str)):
        raise IRError("the right side of 'matches' must be a literal string")
    try:
        rx = BoundedRegex(right["value"])    # bounded in time: RegexTimeout
    except IRError as e:
        raise IRError(f"bad regex {right['value']!r} in 'matches': {e}") from None
    left = compile_expr(node["left"], names)

    def matches(s: Scope) -> bool:
        v = left(s)
        if v is None:
            return False
        if not isinstance(v, str):
            raise ExprError(f"'matches' needs a string, got {type_name(v)}")
        return rx.search(v) is not None

    return matches


def _compile_call(node: dict, names: Collection[str] | None) -> Compiled:
    fname = node["fn"]
    fn = FUNCTIONS.get(fname)
    if fn is None:
        raise IRError(f"unknown function {fname!r}; known: {', '.join(FUNCTIONS)}")
    if len(node["args"]) != fn.arity:
        count = "one argument" if fn.arity == 1 else f"{fn.arity} arguments"
        raise IRError(f"{fname}() takes exactly {count}, got {len(node['args'])}")
    if fn.arity == 1:
        arg = compile_expr(node["args"][0], names)
        return lambda s: fn(arg(s))
    args = [compile_expr(a, names) for a in node["args"]]
    return lambda s: fn(*(a(s) for a in args))


def reads(node: Any) -> set[tuple[str, str | None]]:
    """The context reads of an expression: `(var, attr)` pairs; attr is None when the var's whole
    value is used (anything but a constant attribute/key access on it)."""
    out: set[tuple[str, str | None]] = set()

    def walk(n: Any) -> None:
        if not isinstance(n, dict):
            return
        op = n.get("op")
        if op in ("attr", "index") and isinstance(n.get("obj"), dict) and n["obj"].get("op") == "var":
            key = n.get("name") if op == "attr" else _lit_str(n.get("index"))
            out.add((n["obj"]["name"], key))
            if op == "index":
                walk(n.get("index"))
            return
        if op == "var":
            out.add((n["name"], None))
            return
        for v in n.values():
            if isinstance(v, dict):
                walk(v)
            elif isinstance(v, list):
                for item in v:
                    walk(item)

    walk(node)
    return out


def _lit_str(n: Any) -> str | None:
    if isinstance(n, dict) and n.get("op") == "lit" and isinstance(n.get("value"), str):
        return n["value"]
    return None
