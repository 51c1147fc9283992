"""Canonical source text of expressions and literals (used by the IR's guard labels and by `fmt`)."""

from __future__ import annotations

import re
from decimal import Decimal

from . import nodes as n
from .strings import _dedent, decode

# Binding strength: higher binds tighter.
_PREC = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6, "%": 6, "neg": 7, "postfix": 8}
_CMP = {"==", "!=", "<", "<=", ">", ">=", "in", "not_in", "contains", "matches"}


def _prec(e: n.Expr) -> int:
    if isinstance(e, n.BoolOp):
        return _PREC[e.op]
    if isinstance(e, n.Unary):
        return _PREC[e.op]
    if isinstance(e, n.Binary):
        return _PREC["cmp"] if e.op in _CMP else _PREC[e.op]
    if isinstance(e, n.RangeExpr):
        return 0
    if isinstance(e, n.Literal) and e.kind in ("int", "float", "quantity") and _num(e).startswith("-"):
        return _PREC["neg"]
    return _PREC["postfix"]


def _wrap(e: n.Expr, min_prec: int, indent: str | None = None, source: str | None = None) -> str:
    s = expr(e, indent, source)
    return f"({s})" if _prec(e) < min_prec else s


def _float(v: float) -> str:
    """A float as the lexer reads it back: digits and one `.`, never an exponent."""
    s = repr(v)
    if "e" in s or "E" in s:
        s = format(Decimal(s), "f")
    return s if "." in s else s + ".0"


def _num(e: n.Literal) -> str:
    if e.kind == "quantity":
        num, unit = e.value
        return f"{_float(num) if isinstance(num, float) else num}{unit}"
    return _float(e.value) if isinstance(e.value, float) else str(e.value)


_PLAIN = re.compile(r'"(?:[^"\\\n]|\\[^\n])*"')
_RAW = re.compile(r'r"(?:[^"\\\n]|\\[^\n])*"')


def _reads_back(text: str, value: str) -> bool:
    """Does `text` lex as one string token whose decoded value is `value`?"""
    if text.startswith(('"""', 'r"""')):
        body = 4 if text.startswith("r") else 3
        if len(text) < body + 3 or text.find('"""', body) != len(text) - 3:
            return False
    elif not (_RAW if text.startswith("r") else _PLAIN).fullmatch(text):
        return False
    got, _, _, bad = decode(text, 0)
    return got == value and not bad


def _plain(v: str) -> str:
    esc = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{esc}"'


def _long(v: str, prefix: str, indent: str | None, block: bool | None = None) -> str:
    """Triple-quoted text: inline, or (given an indent; by default for several lines) a block whose
    lines sit at indent + 2 and whose closing quotes sit at indent."""
    if indent is None or not ("\n" in v if block is None else block):
        return f'{prefix}"""{v}"""'
    inner = indent + "  "
    body = "\n".join(inner + line if line else "" for line in v.split("\n"))
    return f'{prefix}"""\n{body}\n{indent}"""'


def _candidates(v: str, style: str, indent: str | None, token: str | None):
    if token is not None and style in ("long", "rawlong"):
        # As written: the source text of the string, escapes kept, only its indentation redone.
        prefix = "r" if style == "rawlong" else ""
        written = "".join(c for c, _ in _dedent(token[len(prefix) + 3 : -3], 0))
        yield _long(written, prefix, indent, "\n" in token)
    if style == "raw":
        yield f'r"{v}"'
    elif style == "rawlong":
        yield _long(v, "r", indent)
    elif style == "long":
        esc = v.replace("\\", "\\\\")
        yield _long(esc, "", indent)
        yield _long(esc.replace("\t", "\\t"), "", indent)
        yield _long(esc.replace("\t", "\\t").replace('"', '\\"'), "", indent)


def string(e: n.Literal, indent: str | None = None, source: str | None = None) -> str:
    """A string literal in the style it was written in (raw stays raw, triple-quoted stays so) when
    that style can hold its value, else a plain string with canonical escapes.

    With `indent` (the indentation of the line the literal starts on), a multi-line triple-quoted string
    is laid out as a block: its lines at indent + 2, the closing quotes at indent. With `source` (the
    text `e.span` points into), a triple-quoted string keeps its escapes and its block or inline form
    as written. Every candidate is decoded again and used only if it gives back the same value.
    """
    v: str = e.value
    token = source[e.span.start : e.span.end] if source is not None else None
    for text in _candidates(v, e.style, indent, token):
        if _reads_back(text, v):
            return text
    return _plain(v)


def expr(e: n.Expr, indent: str | None = None, source: str | None = None) -> str:
    """Canonical text of an expression, on one line except for multi-line strings (see `string`).

    `and` inside `or` (and the reverse) is always parenthesized, for the reader.
    """
    if isinstance(e, n.Literal):
        if e.kind == "str":
            return string(e, indent, source)
        if e.kind == "bool":
            return "true" if e.value else "false"
        if e.kind == "null":
            return "null"
        return _num(e)
    if isinstance(e, n.ListExpr):
        return "[" + ", ".join(expr(i, indent, source) for i in e.items) + "]"
    if isinstance(e, n.RangeExpr):
        return f"{expr(e.lo, indent, source)}..{expr(e.hi, indent, source)}"
    if isinstance(e, n.Var):
        return e.name
    if isinstance(e, n.Attr):
        return f"{_wrap(e.obj, _PREC['postfix'], indent, source)}.{e.name.value}"
    if isinstance(e, n.Index):
        return f"{_wrap(e.obj, _PREC['postfix'], indent, source)}[{expr(e.index, indent, source)}]"
    if isinstance(e, n.Slice):
        lo = expr(e.lo, indent, source) if e.lo is not None else ""
        hi = expr(e.hi, indent, source) if e.hi is not None else ""
        return f"{_wrap(e.obj, _PREC['postfix'], indent, source)}[{lo}:{hi}]"
    if isinstance(e, n.Call):
        return f"{e.fn.value}(" + ", ".join(expr(a, indent, source) for a in e.args) + ")"
    if isinstance(e, n.Unary):
        if e.op == "not":
            return f"not {_wrap(e.arg, _PREC['not'], indent, source)}"
        arg = _wrap(e.arg, _PREC["neg"], indent, source)
        return f"-({arg})" if arg.startswith("-") else f"-{arg}"  # `-(-x)`, not `--x`
    if isinstance(e, n.BoolOp):
        p = _PREC[e.op]
        return f" {e.op} ".join(f"({expr(a, indent, source)})" if isinstance(a, n.BoolOp) else
                                _wrap(a, p + 1, indent, source) for a in e.args)
    if isinstance(e, n.Binary):
        op = "not in" if e.op == "not_in" else e.op
        if e.op in _CMP:
            p = _PREC["cmp"]
            return f"{_wrap(e.left, p + 1, indent, source)} {op} {_wrap(e.right, p + 1, indent, source)}"
        p = _PREC[e.op]
        return f"{_wrap(e.left, p, indent, source)} {op} {_wrap(e.right, p + 1, indent, source)}"
    raise TypeError(type(e).__name__)
