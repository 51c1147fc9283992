"""Expressions: the node table and null semantics of docs/ir.md, evaluated exactly."""

from __future__ import annotations

import re
from typing import Any

import pytest
from matrixlang.runtime.ir import IRError
from matrixlang.runtime.semantics.expr import ExprError, compile_expr, reads, to_str
from support.ir_fixtures import and_, attr, bin, call, dot, index, list_, lit, neg, not_, or_, var


class DictScope:
    def __init__(self, **names: Any) -> None:
        self.names = names

    def var(self, name: str) -> Any:
        return self.names[name]


CTX = DictScope(
    row={"id": "q1", "n": 3, "x": 2.5, "s": "Hello World", "tags": ["a", "b"], "opt": None, "flag": True,
         "obj": {"k": [10, 20, 30]}},
    turns=4,
    visits={"teacher": 2},
    last={"agent": "student", "text": "Answer: B"},
    history=[{"agent": "teacher", "text": "Answer: A"}, {"agent": "student", "text": "Answer: B"}],
    teacher={"text": "Answer: A", "answer": "A", "exit_code": None},
    student={"text": None, "answer": None, "exit_code": None},
)
N = lit(None)


def sl(obj: dict, lo: dict | None, hi: dict | None) -> dict:
    return {"op": "slice", "obj": obj, "lo": lo, "hi": hi}


EVAL_TABLE = [
    # literals, lists, names
    (lit(7), 7),
    (lit("x"), "x"),
    (list_(lit(1), dot("row.n")), [1, 3]),
    (var("turns"), 4),
    (dot("teacher.answer"), "A"),
    (dot("visits.teacher"), 2),
    (dot("row.missing"), None),
    (dot("row.opt.deeper"), None),          # attr of null is null
    (attr(dot("row.s"), "x"), None),         # attr of a non-object is null
    (dot("last.agent"), "student"),
    # index
    (index(var("history"), lit(0)), {"agent": "teacher", "text": "Answer: A"}),
    (attr(index(var("history"), lit(-1)), "agent"), "student"),
    (index(var("history"), lit(5)), None),
    (index(var("history"), lit(-3)), None),
    (index(dot("row.s"), lit(1)), "e"),
    (index(dot("row.obj.k"), lit(-1)), 30),
    (index(var("row"), lit("n")), 3),
    (index(var("row"), lit("nope")), None),
    (index(dot("row.opt"), lit(0)), None),
    (index(dot("row.tags"), N), None),
    # slice: Python semantics; null object → null; a null bound is an omitted one
    (sl(dot("row.s"), None, lit(5)), "Hello"),
    (sl(dot("row.s"), lit(-5), None), "World"),
    (sl(dot("row.tags"), lit(1), None), ["b"]),
    (sl(dot("row.tags"), lit(5), lit(9)), []),
    (sl(dot("row.opt"), None, lit(2)), None),
    (sl(dot("row.s"), dot("row.opt"), lit(2)), "He"),
    # equality: null compares normally, booleans are not numbers
    (bin("==", N, N), True),
    (bin("!=", N, lit("Yes")), True),
    (bin("==", N, lit("Yes")), False),
    (bin("==", dot("student.answer"), dot("teacher.answer")), False),
    (bin("==", lit(3), lit(3.0)), True),
    (bin("==", lit(True), lit(1)), False),
    (bin("!=", lit(True), lit(1)), True),
    (bin("==", dot("row.tags"), list_(lit("a"), lit("b"))), True),
    # ordering: null operand → false (both ways)
    (bin("<", N, lit(3)), False),
    (bin(">=", N, lit(3)), False),
    (bin("<", lit(3), N), False),
    (bin("<=", N, N), False),
    (bin("<", lit(2), lit(3)), True),
    (bin(">=", var("turns"), lit(4)), True),
    (bin(">", lit("b"), lit("a")), True),
    (bin("<", dot("row.x"), lit(3)), True),
    # arithmetic: null operand → null
    (bin("+", lit(2), lit(3)), 5),
    (bin("+", lit("a"), lit("b")), "ab"),
    (bin("+", dot("row.tags"), list_(lit("c"))), ["a", "b", "c"]),
    (bin("+", N, lit(1)), None),
    (bin("-", lit(1), N), None),
    (bin("*", N, N), None),
    (bin("-", lit(7), lit(2)), 5),
    (bin("*", lit(4), lit(2.5)), 10.0),
    (bin("/", lit(7), lit(2)), 3.5),
    (bin("%", lit(7), lit(3)), 1),
    (bin("/", N, lit(0)), None),
    (neg(lit(3)), -3),
    (neg(N), None),
    # logic: short-circuit, boolean results, Python truthiness
    (and_(lit(1), lit("x")), True),
    (and_(lit(1), N), False),
    (or_(N, lit(0), lit("")), False),
    (or_(N, lit("y")), True),
    (and_(lit(False), bin("<", lit("a"), lit(1))), False),   # the erroring operand is never evaluated
    (or_(lit(True), bin("<", lit("a"), lit(1))), True),
    (not_(N), True),
    (not_(lit("x")), False),
    (not_(list_()), True),
    # membership, contains, matches: null operand → false (also for not_in)
    (bin("in", lit("a"), dot("row.tags")), True),
    (bin("in", lit("z"), dot("row.tags")), False),
    (bin("not_in", lit("z"), dot("row.tags")), True),
    (bin("in", N, dot("row.tags")), False),
    (bin("not_in", N, dot("row.tags")), False),
    (bin("not_in", lit("a"), N), False),
    (bin("in", lit("World"), dot("row.s")), True),
    (bin("in", lit("n"), var("row")), True),
    (bin("in", lit(1), list_(lit(True))), False),
    (bin("contains", dot("row.s"), lit("lo W")), True),
    (bin("contains", dot("row.tags"), lit("b")), True),
    (bin("contains", N, lit("b")), False),
    (bin("contains", dot("row.s"), N), False),
    (bin("matches", dot("row.s"), lit(r"^hel")), False),
    (bin("matches", dot("row.s"), lit(r"(?i)^hel")), True),
    (bin("matches", lit("a\nb"), lit(r"a.b")), True),          # DOTALL
    (bin("matches", lit("xx Answer: C"), lit(r"Answer: [A-D]")), True),  # search, not match
    (bin("matches", N, lit(".*")), False),
    # functions: null → null
    (call("len", dot("row.tags")), 2),
    (call("len", dot("row.s")), 11),
    (call("len", dot("row.obj")), 1),
    (call("len", N), None),
    (call("lower", dot("row.s")), "hello world"),
    (call("upper", lit("ab")), "AB"),
    (call("strip", lit("  ab \n")), "ab"),
    (call("upper", N), None),
    (call("int", lit("42")), 42),
    (call("int", lit(" 7 ")), 7),
    (call("int", lit(3.9)), 3),
    (call("int", lit("3.0")), 3),
    (call("int", N), None),
    (call("float", lit("2.5")), 2.5),
    (call("float", lit(2)), 2.0),
    (call("str", lit(3)), "3"),
    (call("str", lit(2.5)), "2.5"),
    (call("str", lit(True)), "true"),
    (call("str", dot("row.tags")), '["a", "b"]'),
    (call("str", N), None),
    (bin(">=", call("len", dot("row.opt")), lit(1)), False),   # null flows through len, then compares false
]


@pytest.mark.parametrize(("node", "expected"), EVAL_TABLE, ids=[str(i) for i in range(len(EVAL_TABLE))])
def test_eval_table(node: dict, expected: Any) -> None:
    got = compile_expr(node)(CTX)
    assert got == expected
    assert type(got) is type(expected)


ERROR_TABLE = [
    (sl(var("turns"), None, lit(1)), "cannot slice integer"),
    (sl(dot("row.s"), lit("a"), None), "slice bounds must be integers, got string"),
    (bin("<", lit("a"), lit(1)), "cannot compare string with integer using <"),
    (bin(">=", lit(True), lit(1)), "cannot compare boolean with integer"),
    (bin("<", dot("row.tags"), lit(1)), "cannot compare array with integer"),
    (bin("+", lit("a"), lit(1)), "cannot add string and integer"),
    (bin("-", lit("a"), lit("b")), "cannot apply - to string and string"),
    (bin("*", lit("ab"), lit(3)), "cannot apply * to string and integer"),
    (bin("%", lit("%s"), lit(1)), "cannot apply % to string and integer"),
    (bin("/", lit(1), lit(0)), "division by zero"),
    (bin("%", lit(1), lit(0)), "division by zero"),
    (neg(lit("a")), "cannot negate string"),
    (bin("in", lit(1), lit("abc")), "integer is in a string"),
    (bin("in", lit("a"), lit(3)), "membership in integer"),
    (bin("matches", lit(3), lit("3")), "'matches' needs a string, got integer"),
    (index(dot("row.tags"), lit("a")), "cannot index array with string"),
    (index(var("turns"), lit(0)), "cannot index integer"),
    (call("len", lit(3)), "len() of integer"),
    (call("lower", lit(3)), "lower() of integer"),
    (call("int", lit("abc")), "int() of 'abc'"),
    (call("int", lit(True)), "int() of boolean"),
    (call("float", lit("x")), "float() of 'x'"),
]


@pytest.mark.parametrize(("node", "message"), ERROR_TABLE, ids=[m for _, m in ERROR_TABLE])
def test_eval_errors(node: dict, message: str) -> None:
    with pytest.raises(ExprError, match=re.escape(message)):
        compile_expr(node)(CTX)


COMPILE_ERRORS = [
    ({"op": "pow", "left": lit(1), "right": lit(2)}, "unknown expression op 'pow'"),
    ({"value": 1}, "must be an object with an 'op'"),
    (call("sqrt", lit(4)), "unknown function 'sqrt'"),
    (call("len", lit(1), lit(2)), "exactly one argument"),
    (bin("matches", lit("a"), var("row")), "must be a literal string"),
    (bin("matches", lit("a"), lit("(")), "bad regex"),
    ({"op": "attr", "obj": var("row")}, "lacks key 'name'"),
    (and_(), "and needs arguments"),
]


@pytest.mark.parametrize(("node", "message"), COMPILE_ERRORS, ids=[m for _, m in COMPILE_ERRORS])
def test_compile_errors(node: dict, message: str) -> None:
    with pytest.raises(IRError, match=re.escape(message)):
        compile_expr(node)


def test_unknown_names_rejected_at_compile_time_when_names_given() -> None:
    compile_expr(dot("teacher.answer"), {"teacher", "row"})
    with pytest.raises(IRError, match="unknown name 'techer'"):
        compile_expr(dot("techer.answer"), {"teacher", "row"})


def test_reads_reports_constant_attributes_and_whole_uses() -> None:
    node = and_(bin("==", dot("student.answer"), dot("teacher.text")),
                bin(">", call("len", var("history")), lit(2)),
                bin("==", index(var("last"), lit("text")), lit("x")),
                bin("in", lit("a"), index(var("row"), dot("teacher.answer"))))
    assert reads(node) == {("student", "answer"), ("teacher", "text"), ("history", None), ("last", "text"),
                           ("row", None), ("teacher", "answer")}


def test_to_str_spells_json() -> None:
    assert [to_str(v) for v in ("a", 1, 1.5, False, {"k": [1, None]})] == ["a", "1", "1.5", "false",
                                                                          '{"k": [1, null]}']
