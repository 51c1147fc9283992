"""Static types of guard and output expressions, and the checker that infers them.

The types are few: str int float bool null, `list[T]`, objects with known fields (the row, an agent,
`last`), and `any` for JSON values whose shape is known only at run time. `T?` may be null.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import regex

from matrixlang.runtime.names import CONTEXT_NAMES, ENTRY_FIELDS
from matrixlang.runtime.semantics.expr import FUNCTIONS

from . import nodes as n
from .diagnostics import Diagnostics, did_you_mean


@dataclass(frozen=True, slots=True)
class Ty:
    kind: str  # "str" "int" "float" "bool" "null" "list" "obj" "any"
    elem: Ty | None = None
    fields: tuple[tuple[str, Ty], ...] = ()
    optional: bool = False
    what: str = ""  # objects: what they are, for messages ("the input row", "agent `teacher`")

    def opt(self) -> Ty:
        return Ty(self.kind, self.elem, self.fields, True, self.what)

    def field(self, name: str) -> Ty | None:
        return dict(self.fields).get(name)

    def __str__(self) -> str:
        base = f"list[{self.elem}]" if self.kind == "list" else ("object" if self.kind == "obj" else self.kind)
        if self.kind == "any":
            base = "json"
        return base + ("?" if self.optional and self.kind not in ("null", "any") else "")


STR, INT, FLOAT, BOOL, NULL, ANY = Ty("str"), Ty("int"), Ty("float"), Ty("bool"), Ty("null"), Ty("any")
NUMERIC = ("int", "float")
ENTRY = Ty("obj", fields=tuple((f, STR) for f in ENTRY_FIELDS), what="a history entry")


def list_of(t: Ty) -> Ty:
    return Ty("list", elem=t)


def obj(fields: dict[str, Ty], what: str) -> Ty:
    return Ty("obj", fields=tuple(fields.items()), what=what)


def compatible(a: Ty, b: Ty) -> bool:
    """Can values of these types ever be equal?"""
    if "any" in (a.kind, b.kind) or "null" in (a.kind, b.kind):
        return True
    if a.kind in NUMERIC and b.kind in NUMERIC:
        return True
    if a.kind == "bool" and b.kind == "bool":
        return True
    return a.kind == b.kind


@dataclass
class Scope:
    """What expressions may read: the context names and each agent's fields."""

    row: Ty
    agents: dict[str, Ty]
    on_read: Callable[[str, str], None] = field(default=lambda agent, fld: None)  # records agent.field reads
    allow_history: bool = True
    broken: frozenset[str] = frozenset()  # declared but unparsable: read as json, without errors


class TypeChecker:
    def __init__(self, scope: Scope, diags: Diagnostics):
        self.scope = scope
        self.diags = diags

    def check(self, e: n.Expr) -> Ty:
        method = getattr(self, "_" + type(e).__name__)
        return method(e)

    # ---- leaves ----
    def _Literal(self, e: n.Literal) -> Ty:
        if e.kind == "quantity":
            self.diags.error("E045", f"`{e.value[0]}{e.value[1]}` (a duration or size) is not a value here",
                             e.span, "guards compare plain numbers, strings and booleans")
            return ANY
        return {"str": STR, "int": INT, "float": FLOAT, "bool": BOOL, "null": NULL}[e.kind]

    def _ListExpr(self, e: n.ListExpr) -> Ty:
        ts = [self.check(i) for i in e.items]
        kinds = {t.kind for t in ts}
        return list_of(ts[0] if len(kinds) == 1 else ANY)

    def _RangeExpr(self, e: n.RangeExpr) -> Ty:
        self.diags.error("E045", "a range is not a value in an expression", e.span,
                         "ranges are for settings such as `tokens = 200..800`")
        return ANY

    def _Var(self, e: n.Var) -> Ty:
        s = self.scope
        if e.name == "row":
            return s.row
        if e.name == "turns":
            return INT
        if e.name == "visits":
            return obj(dict.fromkeys(s.agents, INT), "visits")
        if e.name in ("history", "last") and not s.allow_history:
            self.diags.error("E045", f"`{e.name}` cannot be read here", e.span)
            return ANY
        if e.name == "history":
            return list_of(ENTRY)
        if e.name == "last":
            return ENTRY.opt()
        if e.name in s.agents:
            return s.agents[e.name]
        if e.name in s.broken:
            return ANY
        names = list(CONTEXT_NAMES) + list(s.agents)
        literal = {"none": "null", "nil": "null", "undefined": "null", "true": "true", "false": "false"}.get(
            e.name.lower())
        self.diags.error("E040", f"unknown name `{e.name}`", e.span,
                         (f"write `{literal}`" if literal else None) or did_you_mean(e.name, names)
                         or f"names here are {', '.join(sorted(names))}")
        return ANY

    # ---- access ----
    def _Attr(self, e: n.Attr) -> Ty:
        base = self.check(e.obj)
        name = e.name.value
        if base.kind == "any":
            return ANY
        if base.kind != "obj":
            self.diags.error("E043", f"a value of type {base} has no field `{name}`", e.name.span)
            return ANY
        t = base.field(name)
        if t is None and base.what == "visits" and name in self.scope.broken:
            return INT
        if t is None:
            known = [f for f, _ in base.fields]
            if base.what == "the input row":
                code, msg = "E042", f"the input has no field `{name}`"
            elif base.what == "visits":
                code, msg = "E040", f"`visits.{name}`: no agent is named `{name}`"
            elif base.what.startswith("agent"):
                code, msg = "E041", f"{base.what} has no field `{name}`"
            else:
                code, msg = "E041", f"{base.what} has no field `{name}`"
            self.diags.error(code, msg, e.name.span,
                             did_you_mean(name, known) or (f"its fields are {', '.join(known)}" if known else None))
            return ANY
        if isinstance(e.obj, n.Var) and e.obj.name in self.scope.agents:
            self.scope.on_read(e.obj.name, name)
        # Reading through an optional object (`last.text`) may give null.
        return t.opt() if base.optional else t

    def _Index(self, e: n.Index) -> Ty:
        base = self.check(e.obj)
        it = self.check(e.index)
        if base.kind == "list":
            if it.kind not in ("int", "any"):
                self.diags.error("E043", f"a list index must be an int, not {it}", e.index.span)
            return base.elem.opt() if base.elem else ANY
        if base.kind == "str":
            if it.kind not in ("int", "any"):
                self.diags.error("E043", f"a string index must be an int, not {it}", e.index.span)
            return STR.opt()
        if base.kind == "obj" and isinstance(e.index, n.Literal) and e.index.kind == "str":
            return self._Attr(n.Attr(e.span, e.obj, n.Name(e.index.span, e.index.value)))
        if base.kind in ("any", "obj"):
            return ANY
        self.diags.error("E043", f"a value of type {base} cannot be indexed", e.obj.span)
        return ANY

    def _Slice(self, e: n.Slice) -> Ty:
        base = self.check(e.obj)
        for x in (e.lo, e.hi):
            if x is not None and self.check(x).kind not in ("int", "any"):
                self.diags.error("E043", "slice bounds must be ints", x.span)
        if base.kind in ("str", "list", "any"):
            return base
        self.diags.error("E043", f"a value of type {base} cannot be sliced", e.obj.span)
        return ANY

    # ---- operators ----
    def _Unary(self, e: n.Unary) -> Ty:
        t = self.check(e.arg)
        if e.op == "not":
            return BOOL
        if t.kind not in (*NUMERIC, "any"):
            self.diags.error("E043", f"cannot negate a value of type {t}", e.span)
            return ANY
        return t

    def _BoolOp(self, e: n.BoolOp) -> Ty:
        for a in e.args:
            self.check(a)
        return BOOL

    def _Binary(self, e: n.Binary) -> Ty:
        lt, rt = self.check(e.left), self.check(e.right)
        op = e.op
        span = e.op_span or e.span
        shown = op.replace("_", " ")
        if op in ("==", "!="):
            if not compatible(lt, rt):
                always = "false" if op == "==" else "true"
                self.diags.error("E043", f"`{op}` compares {lt} with {rt}: they are never equal, so this is "
                                 f"always {always}", span, _conversion_hint(lt, rt))
            elif op == "==" and _is_null(e.left) != _is_null(e.right):
                t = rt if _is_null(e.left) else lt
                if not t.optional and t.kind not in ("any", "null"):
                    self.diags.warning("W005", f"`== null` is always false: this {t} value is never null",
                                       span, "remove the comparison, or compare with a value")
            return BOOL
        if op in ("<", "<=", ">", ">="):
            ok = (lt.kind in (*NUMERIC, "any") and rt.kind in (*NUMERIC, "any")) or \
                 (lt.kind in ("str", "any") and rt.kind in ("str", "any"))
            if not ok or "null" in (lt.kind, rt.kind):
                self.diags.error("E043", f"cannot order {lt} and {rt} with `{op}`", span, _conversion_hint(lt, rt))
            return BOOL
        if op in ("in", "not_in"):
            if rt.kind not in ("list", "str", "any", "obj"):
                self.diags.error("E043", f"`{shown}` needs a list or a string on its right, not {rt}", span)
            elif rt.kind == "list" and rt.elem and not compatible(lt, rt.elem):
                self.diags.error("E043", f"`{shown}`: a {lt} is never in a list of {rt.elem}", span)
            return BOOL
        if op == "contains":
            if lt.kind not in ("list", "str", "any"):
                self.diags.error("E043", f"`contains` needs a list or a string on its left, not {lt}", span)
            return BOOL
        if op == "matches":
            if lt.kind not in ("str", "any"):
                self.diags.error("E043", f"`matches` needs a string on its left, not {lt}", span)
            if not (isinstance(e.right, n.Literal) and e.right.kind == "str"):
                self.diags.error("E045", "`matches` takes a regex literal on its right", e.right.span,
                                 'e.g. `last.text matches r"^Answer:"`')
            else:
                check_regex(self.diags, e.right)
            return BOOL
        # arithmetic
        maybe_null = lt.optional or rt.optional
        if op == "+" and lt.kind == rt.kind and lt.kind in ("str", "list"):
            return lt.opt() if maybe_null else lt
        if lt.kind in (*NUMERIC, "any") and rt.kind in (*NUMERIC, "any"):
            if "any" in (lt.kind, rt.kind):
                return ANY
            res = FLOAT if "float" in (lt.kind, rt.kind) or op == "/" else INT
            return res.opt() if maybe_null else res
        self.diags.error("E043", f"cannot apply `{op}` to {lt} and {rt}", span, _conversion_hint(lt, rt))
        return ANY

    def _Call(self, e: n.Call) -> Ty:
        name = e.fn.value
        fn = FUNCTIONS.get(name)
        if fn is None:
            self.diags.error("E044", f"unknown function `{name}`", e.fn.span,
                             did_you_mean(name, FUNCTIONS) or f"functions are {', '.join(FUNCTIONS)}")
            for a in e.args:
                self.check(a)
            return ANY
        if len(e.args) != fn.arity:
            self.diags.error("E044", f"`{name}` takes {fn.arity} argument{'s' * (fn.arity != 1)}, "
                             f"not {len(e.args)}", e.span)
            return ANY
        maybe_null = False
        for arg, kinds in zip(e.args, fn.params, strict=True):
            t = self.check(arg)
            maybe_null = maybe_null or t.optional or t.kind == "null"
            if t.kind not in (*kinds, "any", "null"):
                self.diags.error("E043", f"`{name}` needs {_kinds_text(kinds)}, not {t}", arg.span)
        res = _KIND_TYPES[fn.returns]
        return res.opt() if maybe_null else res


_KIND_TYPES = {"str": STR, "int": INT, "float": FLOAT, "bool": BOOL}
_KIND_WORDS = {"str": "a string", "int": "an int", "float": "a float", "bool": "a boolean", "list": "a list",
               "obj": "an object"}


def _kinds_text(kinds: tuple[str, ...]) -> str:
    """`("int", "float", "str")` → "a number or a string"."""
    words = [_KIND_WORDS[k] for k in kinds if not ({"int", "float"} <= set(kinds) and k in NUMERIC)]
    if {"int", "float"} <= set(kinds):
        words.insert(0, "a number")
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _is_null(e: n.Expr) -> bool:
    return isinstance(e, n.Literal) and e.kind == "null"


def _conversion_hint(a: Ty, b: Ty) -> str | None:
    kinds = {a.kind, b.kind}
    if kinds == {"str", "int"} or kinds == {"str", "float"}:
        return "convert one side, e.g. `int(x)` or `str(x)`, or drop the quotes around the number"
    return None


def check_regex(diags: Diagnostics, lit: n.Literal) -> bool:
    """Whether the pattern compiles as the runtime compiles it (Python's re syntax, run by the regex
    module); E025 when not."""
    try:
        re.compile(lit.value, re.DOTALL)
        regex.compile(lit.value, regex.DOTALL | regex.VERSION0)
        return True
    except (OverflowError, RecursionError, MemoryError, regex.error) as exc:
        why = {OverflowError: "a repetition count is too large", RecursionError: "nested too deeply",
               MemoryError: "too large"}.get(type(exc), str(exc))
        diags.error("E025", f"bad regular expression: {why}", lit.span,
                    "regexes use Python's `re` syntax, within the runtime's limits")
        return False
    except re.error as exc:
        pos = exc.pos if exc.pos is not None else 0
        offs = lit.offsets or []
        start = offs[pos] if pos < len(offs) else lit.span.start
        from .source import Span

        diags.error("E025", f"bad regular expression: {exc.msg}", Span(start, start + 1),
                    "regexes use Python's `re` syntax; write them as raw strings r\"...\"")
        return False
