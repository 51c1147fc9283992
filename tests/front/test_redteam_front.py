"""Issue 11, break 6 (front end): inputs that made `mxc check` fail with an internal error (exit 3)
or accept what the runtime cannot run. Each is a diagnostic now."""

from __future__ import annotations

import pytest

from matrixlang.checker import check
from matrixlang.compiler import build_ir, dumps
from matrixlang.diagnostics import render_one
from matrixlang.source import Source

BASE = '''workflow w "deep"
input {{ id: str  x: int  tags: {ty} }}
model llm {{ backend = "sim" }}
agent a {{ model = llm  prompt = "{prompt}"  extract v = regex(r"{rx}") }}
flow {{
  start -> a
  a -> end when a.v != null and {guard}
  a -> fail "no"
}}
output {{ id = row.id  y = {out} }}
'''
OK = {"ty": "list[str]", "prompt": "hi", "rx": "(a)", "guard": "row.x > 0", "out": "row.x"}


def program(**kw) -> str:
    return BASE.format(**{**OK, **kw})


CASES = {
    "flat sum of 490 terms": (dict(out=" + ".join(["row.x"] * 490)), "E001"),
    "490 nots": (dict(guard="not " * 490 + "true"), "E001"),
    "a list 330 deep": (dict(out="[" * 330 + "1" + "]" * 330), "E001"),
    "list[ 490 deep": (dict(ty="list[" * 490 + "str" + "]" * 490), "E001"),
    "240 nested ifs": (dict(prompt="{% if true %}" * 240 + "x" + "{% endif %}" * 240), "E027"),
    "490 nested regex groups": (dict(rx="(" * 490 + "a" + ")" * 490), "E025"),
    "a{4294967296}": (dict(rx="a{4294967296}"), "E025"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_break6_deep_or_huge_programs_are_diagnostics(name):
    kw, code = CASES[name]
    an = check(Source("deep.mx", program(**kw)))
    codes = [d.code for d in an.diags.items if d.is_error]
    assert code in codes, [d.message for d in an.diags.items]


@pytest.mark.parametrize("kw", [dict(out=" + ".join(["row.x"] * 95)), dict(guard="not " * 94 + "true"),
                                dict(out="[" * 93 + "1" + "]" * 93), dict(ty="list[" * 95 + "str" + "]" * 95)])
def test_nesting_under_the_limit_still_compiles(kw):
    an = check(Source("deep.mx", program(**kw)))
    assert not [d for d in an.diags.items if d.is_error]
    dumps(build_ir(an))


@pytest.mark.parametrize(("setting", "message"), [
    ("timeout = 0ms", "more than zero"), ("memory = 0B", "more than zero"),
    ("memory = 100000000000000000000000000GB", "at most 1 PiB"), ("timeout = 100000h", "at most 365 days"),
])
def test_break6_tool_limits_of_zero_or_beyond_the_runtime_are_errors(setting, message):
    src = f'''workflow w "t"
input {{ id: str }}
tool py {{ kind = "python"  {setting} }}
agent a {{ tool = py  input = "print(1)" }}
flow {{
  start -> a
  a -> end
}}
'''
    an = check(Source("t.mx", src))
    errs = [d for d in an.diags.items if d.is_error]
    assert [d.code for d in errs] == ["E018"] and message in errs[0].message
    shown = render_one(errs[0], Source("t.mx", src))      # file:line:col, the caret, what to write instead
    assert shown.startswith("t.mx:3:") and "^" in shown and "= help: " in shown


def test_a_simulated_latency_of_zero_is_a_value_not_an_error():
    """`ttft = 0ms` / `per_token = 0ms` make a zero-latency simulator (the benchmarks use it); a timeout
    of zero stays an error."""
    src = '''workflow w "t"
input { id: str }
model m { backend = "sim"  ttft = 0ms  per_token = 0ms  timeout = 0ms }
agent a { model = m }
flow { start -> a  a -> end }
output { id = row.id }
'''
    an = check(Source("t.mx", src))
    errs = [d for d in an.diags.items if d.is_error]
    assert len(errs) == 1 and "more than zero" in errs[0].message and "0ms" in errs[0].message
    assert src[errs[0].span.start - len("timeout = "):errs[0].span.start] == "timeout = "
