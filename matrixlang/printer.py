"""Canonical source text of expressions and literals (used by the IR's guard labels and by `fmt`)."""

from __future__ import annotations

from . import nodes as n

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


def _wrap(e: n.Expr, min_prec: int) -> str:
    s = expr(e)
    return f"({s})" if _prec(e) < min_prec else s


def _num(e: n.Literal) -> str:
    if e.kind == "quantity":
        num, unit = e.value
        return f"{num:g}{unit}" if isinstance(num, float) else f"{num}{unit}"
    return repr(e.value) if isinstance(e.value, float) else str(e.value)


def string(e: n.Literal) -> str:
    """A string literal in its own style; plain strings are re-escaped canonically."""
    v: str = e.value
    if e.style == "raw" and '"' not in v and "\n" not in v:
        return f'r"{v}"'
    lines = v.split("\n")
    safe_long = '"""' not in v and lines[0].strip() and lines[-1].strip() and not v.endswith('"')
    if e.style == "rawlong" and safe_long:
        return f'r"""{v}"""'
    if e.style == "long" and safe_long and "\\" not in v:
        return f'"""{v}"""'
    esc = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{esc}"'


def expr(e: n.Expr) -> str:
    if isinstance(e, n.Literal):
        if e.kind == "str":
            return string(e)
        if e.kind == "bool":
            return "true" if e.value else "false"
        if e.kind == "null":
            return "null"
        return _num(e)
    if isinstance(e, n.ListExpr):
        return "[" + ", ".join(expr(i) for i in e.items) + "]"
    if isinstance(e, n.RangeExpr):
        return f"{expr(e.lo)}..{expr(e.hi)}"
    if isinstance(e, n.Var):
        return e.name
    if isinstance(e, n.Attr):
        return f"{_wrap(e.obj, _PREC['postfix'])}.{e.name.value}"
    if isinstance(e, n.Index):
        return f"{_wrap(e.obj, _PREC['postfix'])}[{expr(e.index)}]"
    if isinstance(e, n.Slice):
        lo = expr(e.lo) if e.lo is not None else ""
        hi = expr(e.hi) if e.hi is not None else ""
        return f"{_wrap(e.obj, _PREC['postfix'])}[{lo}:{hi}]"
    if isinstance(e, n.Call):
        return f"{e.fn.value}(" + ", ".join(expr(a) for a in e.args) + ")"
    if isinstance(e, n.Unary):
        if e.op == "not":
            return f"not {_wrap(e.arg, _PREC['not'])}"
        return f"-{_wrap(e.arg, _PREC['neg'])}"
    if isinstance(e, n.BoolOp):
        p = _PREC[e.op]
        return f" {e.op} ".join(_wrap(a, p + 1) for a in e.args)
    if isinstance(e, n.Binary):
        op = "not in" if e.op == "not_in" else e.op
        if e.op in _CMP:
            p = _PREC["cmp"]
            return f"{_wrap(e.left, p + 1)} {op} {_wrap(e.right, p + 1)}"
        p = _PREC[e.op]
        return f"{_wrap(e.left, p)} {op} {_wrap(e.right, p + 1)}"
    raise TypeError(type(e).__name__)
