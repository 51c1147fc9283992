"""The parser: AST shapes, operator precedence, spans that point back at the source, strings with
their offset maps, comments, and recovery after a broken declaration."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matrixlang import nodes as n
from matrixlang.diagnostics import Diagnostics
from matrixlang.parser import parse, parse_expression
from matrixlang.source import Source
from matrixlang.strings import decode


def shape(e: n.Expr) -> object:
    """An expression as nested tuples, to compare trees in one line."""
    if isinstance(e, n.Literal):
        return e.value
    if isinstance(e, n.Var):
        return e.name
    if isinstance(e, n.Attr):
        return (".", shape(e.obj), e.name.value)
    if isinstance(e, n.Index):
        return ("[]", shape(e.obj), shape(e.index))
    if isinstance(e, n.Slice):
        return ("[:]", shape(e.obj), e.lo and shape(e.lo), e.hi and shape(e.hi))
    if isinstance(e, n.Unary):
        return (e.op, shape(e.arg))
    if isinstance(e, n.BoolOp):
        return (e.op, *[shape(a) for a in e.args])
    if isinstance(e, n.Binary):
        return (e.op, shape(e.left), shape(e.right))
    if isinstance(e, n.Call):
        return (e.fn.value + "()", *[shape(a) for a in e.args])
    if isinstance(e, n.ListExpr):
        return [shape(i) for i in e.items]
    raise TypeError(type(e).__name__)


@pytest.mark.parametrize("text, tree", [
    ("1 + 2 * 3 - 4", ("-", ("+", 1, ("*", 2, 3)), 4)),
    ("a or b and not c == 1", ("or", "a", ("and", "b", ("not", ("==", "c", 1))))),
    ("a and b and c", ("and", "a", "b", "c")),
    ("x not in [1, 2,]", ("not_in", "x", [1, 2])),
    ("not x in y", ("not", ("in", "x", "y"))),
    ("last.text contains \"ok\"", ("contains", (".", "last", "text"), "ok")),
    ('last.text matches r"^A\\d"', ("matches", (".", "last", "text"), "^A\\d")),
    ("history[-1].agent", (".", ("[]", "history", -1), "agent")),
    ("row.text[:4000]", ("[:]", (".", "row", "text"), None, 4000)),
    ("row.xs[1:]", ("[:]", (".", "row", "xs"), 1, None)),
    ("-x * 2", ("*", ("neg", "x"), 2)),
    ("-3", -3),
    ("(1 + 2) % 3", ("%", ("+", 1, 2), 3)),
    ("len(lower(x.y)) >= 0.5", (">=", ("len()", ("lower()", (".", "x", "y"))), 0.5)),
    ("visits.teacher <= turns", ("<=", (".", "visits", "teacher"), "turns")),
    # every keyword may follow a dot
    ("x.end == x.input", ("==", (".", "x", "end"), (".", "x", "input"))),
    ("true != null", ("!=", True, None)),
])
def test_expression_trees(text: str, tree: object) -> None:
    assert shape(parse_expression(text)) == tree


def test_quantities_keep_their_unit() -> None:
    assert parse_expression("250ms").value == (250, "ms")
    assert parse_expression("-1.5h").value == (-1.5, "h")
    assert parse_expression("64KB").kind == "quantity"


PROGRAM = '''workflow demo "a small program"   # trailing comment
input { id: str  tags: list[str]?  score: float }
model llm { backend = "sim"  tokens = 10..20 }
agent teacher {
  model = llm
  params { temperature = 0.2 }
  extract answer = regex(r"A: (\\w)")
}
flow {
  start -> teacher
  teacher -> end when teacher.answer != null
  teacher -> fail "no # answer"
}
output { id = row.id }
'''


def test_program_declarations_and_spans() -> None:
    src = Source("demo.mx", PROGRAM)
    diags = Diagnostics()
    prog = parse(src, diags)
    assert diags.items == []
    kinds = [type(d).__name__ for d in prog.decls]
    assert kinds == ["Workflow", "Input", "Model", "Agent", "Flow", "Output"]
    wf, inp, model, agent, flow, out = prog.decls
    assert src.slice(wf.name.span) == "demo" and wf.description.value == "a small program"
    tags = inp.fields[1]
    assert src.slice(tags.span) == "tags: list[str]?"
    assert tags.type.name.value == "list" and tags.type.arg.name.value == "str" and tags.type.optional
    assert src.slice(model.settings[1].value.span) == "10..20"
    assert src.slice(agent.name.span) == "teacher"
    assert src.slice(agent.extracts[0].value.span) == 'regex(r"A: (\\w)")'
    assert agent.params[0].settings[0].key.value == "temperature"
    t = flow.transitions
    assert [src.slice(x.span) for x in t] == ["start -> teacher", "teacher -> end when teacher.answer != null",
                                              'teacher -> fail "no # answer"']
    assert (t[2].target.kind, t[2].target.reason.value) == ("fail", "no # answer")
    assert src.slice(t[1].guard.span) == "teacher.answer != null"
    assert src.line_col(t[1].guard.op_span.start) == (11, 38)
    assert src.slice(out.fields[0].value.span) == "row.id"
    # the `#` inside a string is not a comment
    assert [c.text for c in prog.comments] == ["# trailing comment"]


def test_crlf_sources_have_the_same_positions() -> None:
    src = Source("crlf.mx", PROGRAM.replace("\n", "\r\n"))
    prog = parse(src, Diagnostics())
    agent = prog.decls[3]
    assert src.line_col(agent.name.span.start) == (4, 7)


def test_recovery_keeps_the_declarations_around_a_broken_one() -> None:
    text = PROGRAM.replace("model = llm\n", "model = = llm\n")
    diags = Diagnostics()
    prog = parse(Source("x.mx", text), diags)
    assert [d.code for d in diags.items] == ["E001"]
    assert [type(d).__name__ for d in prog.decls] == ["Workflow", "Input", "Model", "Flow", "Output"]
    assert prog.broken == {"teacher"}


# ---- strings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, value, style", [
    (r'"a\nb\t\"c\" \\ d"', 'a\nb\t"c" \\ d', "plain"),
    (r'r"\d+\s*(\w)"', r"\d+\s*(\w)", "raw"),
    ('"""\n    one\n      two\n    """', "one\n  two", "long"),
    ('r"""\n  \\d\n"""', "\\d", "rawlong"),
    ('""', "", "plain"),
])
def test_string_decoding(raw: str, value: str, style: str) -> None:
    got, got_style, offsets, bad = decode(raw, 0)
    assert (got, got_style, bad) == (value, style, [])
    assert len(offsets) == len(got)


def test_unknown_escapes_are_reported_where_they_are() -> None:
    _, _, _, bad = decode(r'"a \d \q"', 10)
    assert [(b.offset, b.text) for b in bad] == [(13, r"\d"), (16, r"\q")]


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(blacklist_characters='"\\\n\r', blacklist_categories=("Cs",)), max_size=40),
       st.integers(0, 1000))
def test_offsets_point_at_each_character(body: str, start: int) -> None:
    for raw, shift in ((f'"{body}"', 1), (f'r"{body}"', 2)):
        value, _, offsets, _ = decode(raw, start)
        assert value == body
        assert offsets == [start + shift + i for i in range(len(body))]


def test_dedent_offsets_skip_the_margin() -> None:
    raw = '"""\n    ab\n      c\n"""'
    value, _, offsets, _ = decode(raw, 100)
    assert value == "ab\n  c"
    assert [raw[o - 100] for o in offsets] == list("ab\n  c")
