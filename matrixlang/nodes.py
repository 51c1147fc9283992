"""The AST: plain dataclasses, each carrying the span of source it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .source import Span


@dataclass(slots=True)
class Node:
    span: Span


@dataclass(slots=True)
class Name(Node):
    value: str
    is_keyword: bool = False


# ---- expressions ----------------------------------------------------------------------------

@dataclass(slots=True)
class Expr(Node):
    pass


@dataclass(slots=True)
class Literal(Expr):
    """A string, number, bool, null or quantity (`250ms`, `64KB`: value is (number, unit))."""

    kind: str  # "str" | "int" | "float" | "bool" | "null" | "quantity"
    value: Any
    style: str = ""  # strings: "plain" | "raw" | "long" | "rawlong"
    offsets: list[int] | None = field(default=None, repr=False)  # strings: source offset per character


@dataclass(slots=True)
class ListExpr(Expr):
    items: list[Expr]


@dataclass(slots=True)
class RangeExpr(Expr):
    lo: Expr
    hi: Expr


@dataclass(slots=True)
class Var(Expr):
    name: str


@dataclass(slots=True)
class Attr(Expr):
    obj: Expr
    name: Name


@dataclass(slots=True)
class Index(Expr):
    obj: Expr
    index: Expr


@dataclass(slots=True)
class Slice(Expr):
    obj: Expr
    lo: Expr | None
    hi: Expr | None


@dataclass(slots=True)
class Unary(Expr):
    op: str  # "not" | "neg"
    arg: Expr


@dataclass(slots=True)
class Binary(Expr):
    op: str  # == != < <= > >= + - * / % in not_in contains matches
    left: Expr
    right: Expr
    op_span: Span | None = None


@dataclass(slots=True)
class BoolOp(Expr):
    op: str  # "and" | "or"
    args: list[Expr]


@dataclass(slots=True)
class Call(Expr):
    fn: Name
    args: list[Expr]


# ---- declarations ---------------------------------------------------------------------------

@dataclass(slots=True)
class Setting(Node):
    key: Name
    value: Expr


@dataclass(slots=True)
class TypeRef(Node):
    name: Name
    arg: TypeRef | None
    optional: bool


@dataclass(slots=True)
class Field(Node):
    name: Name
    type: TypeRef


@dataclass(slots=True)
class Decl(Node):
    keyword: Span  # the declaration's keyword, for "declared here" labels


@dataclass(slots=True)
class Workflow(Decl):
    name: Name
    description: Literal | None


@dataclass(slots=True)
class Input(Decl):
    fields: list[Field]


@dataclass(slots=True)
class Limits(Decl):
    settings: list[Setting]


@dataclass(slots=True)
class Model(Decl):
    name: Name
    settings: list[Setting]


@dataclass(slots=True)
class Tool(Decl):
    name: Name
    settings: list[Setting]


@dataclass(slots=True)
class Params(Node):
    settings: list[Setting]


@dataclass(slots=True)
class Extract(Node):
    name: Name
    value: Expr


@dataclass(slots=True)
class Agent(Decl):
    name: Name
    items: list[Setting | Params | Extract]

    @property
    def settings(self) -> list[Setting]:
        return [i for i in self.items if isinstance(i, Setting)]

    @property
    def params(self) -> list[Params]:
        return [i for i in self.items if isinstance(i, Params)]

    @property
    def extracts(self) -> list[Extract]:
        return [i for i in self.items if isinstance(i, Extract)]


@dataclass(slots=True)
class StateRef(Node):
    kind: str  # "agent" | "start" | "end" | "fail"
    name: str | None = None  # agent name
    reason: Literal | None = None  # fail reason


@dataclass(slots=True)
class Transition(Node):
    source: StateRef
    target: StateRef
    guard: Expr | None


@dataclass(slots=True)
class Flow(Decl):
    transitions: list[Transition]


@dataclass(slots=True)
class Output(Decl):
    fields: list[Setting]


@dataclass(slots=True)
class Comment(Node):
    text: str


@dataclass(slots=True)
class Program(Node):
    decls: list[Decl]
    comments: list[Comment] = field(default_factory=list)
    broken: set[str] = field(default_factory=set)  # names of declarations that failed to parse

    def of(self, kind: type) -> list:
        return [d for d in self.decls if isinstance(d, kind)]


def walk(expr: Expr):
    """Yield an expression and all its sub-expressions, parents first."""
    stack = [expr]
    while stack:
        e = stack.pop()
        yield e
        if isinstance(e, ListExpr):
            stack.extend(reversed(e.items))
        elif isinstance(e, RangeExpr):
            stack += [e.hi, e.lo]
        elif isinstance(e, (Attr,)):
            stack.append(e.obj)
        elif isinstance(e, Index):
            stack += [e.index, e.obj]
        elif isinstance(e, Slice):
            stack += [x for x in (e.hi, e.lo) if x is not None] + [e.obj]
        elif isinstance(e, Unary):
            stack.append(e.arg)
        elif isinstance(e, Binary):
            stack += [e.right, e.left]
        elif isinstance(e, (BoolOp, Call)):
            stack.extend(reversed(e.args))
