"""The contract between the front end and the runtime: what `mxc check` accepts, the runtime evaluates
and renders as docs/language.md says, and what the runtime cannot do, `mxc check` rejects.

Both sides read one table of the language's names (matrixlang.runtime.names, expr.FUNCTIONS,
templates.FILTERS / TESTS). These tests do not trust that: they probe the checker with candidate names
(the table's, jinja2's, Python's builtins) and run whatever it accepts through the compiler and the
runtime's own evaluator (`compile_expr`) and engine (`Engine.prepare_call`), so that a side that keeps
a list of its own, or renders differently, fails here. Each case table must name exactly what the
checker accepts: a new function, global, filter or test needs its case (and its documentation).
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import subprocess
import sys
from typing import Any

import pytest
from jinja2.defaults import DEFAULT_FILTERS, DEFAULT_NAMESPACE, DEFAULT_TESTS
from matrixlang.runtime import names
from matrixlang.runtime.ir import IRError, load_ir
from matrixlang.runtime.semantics import templates as rt
from matrixlang.runtime.semantics.engine import Engine
from matrixlang.runtime.semantics.expr import FUNCTIONS, ExprError, compile_expr

from matrixlang.compiler import compile_source
from matrixlang.parser import KEYWORDS
from matrixlang.source import Source
from matrixlang.templates import environment

ROW = {"id": "r1", "s": "3", "i": 3, "f": 2.5, "b": True, "l": ["a", "b"], "o": {"k": 1}, "j": {"k": 1}}
INPUT = "input { id: str  s: str  i: int  f: float  b: bool  l: list[str]  o: json  j: json }"


def mx_str(text: str) -> str:
    """`text` as a plain .mx string literal."""
    esc = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{esc}"'


def program(*, prompt: str | None = None, output: dict[str, str] | None = None, extract: str = "") -> str:
    """A one-agent program; `prompt` is .mx source of the prompt (a literal), `output` field → expr."""
    agent = f"model = llm  {'prompt = ' + prompt if prompt is not None else ''}  {extract}"
    fields = "\n".join(f"  {k} = {v}" for k, v in (output or {}).items())
    return (f'workflow w\n{INPUT}\nmodel llm {{ backend = "sim" }}\nagent a {{ {agent} }}\n'
            f"flow {{ start -> a  a -> end }}\noutput {{\n{fields}\n}}\n")


def check(src: str) -> tuple[dict | None, list]:
    ir, an = compile_source(Source("contract.mx", src))
    return ir, an.diags.items


def codes(diags: list) -> set[str]:
    return {d.code for d in diags if d.is_error}


class RowScope:
    def var(self, name: str) -> Any:
        return {"row": ROW}[name]


def evaluate(ir: dict, field: str = "v") -> Any:
    """Evaluate an output field of the IR with the runtime's evaluator (ExprError propagates)."""
    expr = next(f["expr"] for f in ir["output"]["fields"] if f["name"] == field)
    return compile_expr(expr)(RowScope())


def render_prompt(ir: dict) -> str:
    """The prompt the runtime's engine sends for the first step of ROW."""
    eng = Engine(ir)
    msg = eng.new_message(json.dumps(ROW), 0, 1000.0)
    call = eng.prepare_call(msg, [])
    assert msg.status == "running", (msg.reason, msg.detail)
    return call.messages[-1]["content"]


# ---- functions ---------------------------------------------------------------------------------------

# What docs/language.md ("Expressions") promises each function gives.
FUNCTION_CASES: dict[str, list[tuple[str, Any]]] = {
    "len": [('"abc"', 3), ('["a", "b"]', 2), ("row", len(ROW)), ("row.l", 2), ("null", None)],
    "lower": [('"AbC"', "abc"), ("null", None)],
    "upper": [('"AbC"', "ABC")],
    "strip": [('"  a b \\t\\n"', "a b")],
    "int": [('"3.0"', 3), ("2.9", 2), ('" 7 "', 7), ("row.i", 3), ("-2", -2)],
    "float": [('"1.5"', 1.5), ("2", 2.0), ("row.f", 2.5)],
    "str": [("true", "true"), ('["a", 1]', '["a", 1]'), ("1.5", "1.5"), ("3", "3"), ('"x"', "x"), ("null", None)],
}
# A sample of each kind, as an input field of ROW (`row` itself is an object).
KIND_ARGS = {"str": "row.s", "int": "row.i", "float": "row.f", "bool": "row.b", "list": "row.l", "obj": "row"}


def checker_functions() -> set[str]:
    """The function names `mxc check` accepts in an expression, probed."""
    candidates = ({n for n in dir(builtins) if n.isidentifier() and n.islower() and not n.startswith("_")}
                  | set(FUNCTIONS) | set(DEFAULT_FILTERS) | {"length", "env", "regex", "json", "lipsum", "abs"})
    candidates -= set(KEYWORDS)
    fields = {f"f{i}": f'{name}("3")' for i, name in enumerate(sorted(candidates))}
    _, diags = check(program(output=fields))
    unknown = {d.message.split("`")[1] for d in diags if d.code == "E044" and "unknown function" in d.message}
    return candidates - unknown


def test_the_checker_accepts_exactly_the_runtimes_functions() -> None:
    assert checker_functions() == set(FUNCTIONS) == set(FUNCTION_CASES)


@pytest.mark.parametrize(("fn", "arg", "want"), [(f, a, w) for f, cs in FUNCTION_CASES.items() for a, w in cs])
def test_functions_give_what_the_docs_promise(fn: str, arg: str, want: Any) -> None:
    ir, diags = check(program(output={"v": f"{fn}({arg})"}))
    assert ir is not None, [d.message for d in diags]
    got = evaluate(ir)
    assert got == want and type(got) is type(want), (got, want)


@pytest.mark.parametrize("fn", sorted(FUNCTION_CASES))
@pytest.mark.parametrize("kind", sorted(KIND_ARGS))
def test_function_argument_types_agree(fn: str, kind: str) -> None:
    """A call the checker accepts evaluates; one it rejects as a type error is one the runtime refuses."""
    ir, diags = check(program(output={"v": f"{fn}({KIND_ARGS[kind]})"}))
    accepted = not codes(diags)
    assert codes(diags) <= {"E043"}, [d.message for d in diags]
    if accepted:
        evaluate(ir)
        return
    # the same call, built from one on a `json` value (which checks) with the argument swapped in
    ok_ir, _ = check(program(output={"v": f"{fn}(row.j)", "w": KIND_ARGS[kind]}))
    v, w = ok_ir["output"]["fields"]
    v["expr"]["args"][0] = w["expr"]
    with pytest.raises(ExprError, match=rf"^{fn}\(\) of "):
        evaluate(ok_ir)


@pytest.mark.parametrize("fn", sorted(FUNCTION_CASES))
def test_function_arity_agrees(fn: str) -> None:
    ir, _ = check(program(output={"v": f'{fn}("1")'}))
    call = ir["output"]["fields"][0]["expr"]
    for args in ('"1", "2"', ""):
        _, diags = check(program(output={"v": f"{fn}({args})"}))
        assert "E044" in codes(diags)
        bad = {**call, "args": [call["args"][0]] * (2 if args else 0)}
        with pytest.raises(IRError, match="takes exactly"):
            compile_expr(bad)


# ---- template names ----------------------------------------------------------------------------------

# What each global and loop/macro name gives (docs/language.md "Templates").
GLOBAL_CASES = {
    "range": ("{{ range(3) | list }}", "[0, 1, 2]"),
    "dict": ("{{ dict(a=1).a }}", "1"),
    "cycler": ("{% set c = cycler('x', 'y') %}{{ c.next() }}{{ c.next() }}{{ c.next() }}", "xyx"),
    "joiner": ("{% set j = joiner(',') %}{{ j() }}a{{ j() }}b", "a,b"),
    "namespace": ("{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}"
                  "{{ ns.n }}", "3"),
    "loop": ("{% for x in row.l %}{{ loop.index }}{{ x }}{% endfor %}", "1a2b"),
    "caller": ("{% macro m() %}[{{ caller() }}]{% endmacro %}{% call m() %}x{% endcall %}", "[x]"),
    "varargs": ("{% macro m() %}{{ varargs | join(',') }}{% endmacro %}{{ m(1, 2) }}", "1,2"),
    "kwargs": ("{% macro m() %}{{ kwargs.k }}{% endmacro %}{{ m(k=5) }}", "5"),
}


def template_diags(template: str) -> list:
    _, diags = check(program(prompt=mx_str(template)))
    return diags


def checker_template_names() -> set[str]:
    candidates = (set(DEFAULT_NAMESPACE) | set(GLOBAL_CASES) | set(names.TEMPLATE_GLOBALS)
                  | set(names.TEMPLATE_LOCALS) | set(names.TEMPLATE_REMOVED) | {"self", "super", "varargs"})
    return {c for c in candidates if "E040" not in codes(template_diags("{{ " + c + " }}"))}


def test_the_checker_accepts_exactly_the_runtimes_template_names() -> None:
    accepted = checker_template_names()
    assert accepted == set(GLOBAL_CASES)
    assert accepted == set(names.TEMPLATE_GLOBALS) | set(names.TEMPLATE_LOCALS)
    assert set(rt.ENV.globals) == set(names.TEMPLATE_GLOBALS)


@pytest.mark.parametrize("name", sorted(GLOBAL_CASES))
def test_template_names_render_as_documented(name: str) -> None:
    template, want = GLOBAL_CASES[name]
    ir, diags = check(program(prompt=mx_str(template)))
    assert ir is not None, [d.message for d in diags]
    assert render_prompt(ir) == want


def test_lipsum_is_rejected_by_the_checker_and_absent_at_run_time() -> None:
    diags = template_diags("{{ lipsum(1) }}")
    assert [(d.code, "reproducible" in (d.help or "")) for d in diags if d.is_error] == [("E040", True)]
    assert "lipsum" not in rt.ENV.globals


@pytest.mark.parametrize("name", [*names.CONTEXT_NAMES, "a"])
def test_context_names_are_defined_at_run_time(name: str) -> None:
    ir, diags = check(program(prompt=mx_str("{{ " + name + " is defined }}"), output={"v": name}))
    assert ir is not None, [d.message for d in diags]
    assert render_prompt(ir) == "True"
    Engine(ir)  # compiles the output expression against the engine's names


# ---- filters and tests -------------------------------------------------------------------------------

# What jinja2 documents each filter gives (docs/language.md: all jinja2 filters are available).
FILTER_CASES = {
    "abs": ("{{ -3 | abs }}", "3"),
    "attr": ("{{ row | attr('s') is undefined }}", "True"),   # an attribute, never a key (jinja2)
    "batch": ("{{ [1, 2, 3] | batch(2) | list }}", "[[1, 2], [3]]"),
    "capitalize": ("{{ 'hello World' | capitalize }}", "Hello world"),
    "center": ("{{ 'a' | center(5) }}", "  a  "),
    "count": ("{{ [1, 2] | count }}", "2"),
    "d": ("{{ dict().k | d('x') }}", "x"),
    "default": ("{{ dict().k | default('x') }}", "x"),
    "dictsort": ("{{ dict(b=1, a=2) | dictsort }}", "[('a', 2), ('b', 1)]"),
    "e": ("{{ '<a>' | e }}", "&lt;a&gt;"),
    "escape": ("{{ '<a>' | escape }}", "&lt;a&gt;"),
    "filesizeformat": ("{{ 1000000 | filesizeformat }}", "1.0 MB"),
    "first": ("{{ [1, 2] | first }}", "1"),
    "float": ("{{ '1.5' | float }}", "1.5"),
    "forceescape": ("{{ '<a>' | forceescape }}", "&lt;a&gt;"),
    "format": ("{{ '%s-%d' | format('a', 3) }}", "a-3"),
    "groupby": ("{% for g in [dict(k=1, v='a'), dict(k=1, v='b'), dict(k=2, v='c')] | groupby('k') %}"
                "{{ g.grouper }}:{{ g.list | map(attribute='v') | join }};{% endfor %}", "1:ab;2:c;"),
    "indent": ("{{ 'a\nb' | indent(2) }}", "a\n  b"),
    "int": ("{{ '3' | int }}", "3"),
    "items": ("{{ dict(a=1) | items | list }}", "[('a', 1)]"),
    "join": ("{{ ['a', 'b'] | join('-') }}", "a-b"),
    "last": ("{{ [1, 2] | last }}", "2"),
    "length": ("{{ 'abc' | length }}", "3"),
    "list": ("{{ 'ab' | list }}", "['a', 'b']"),
    "lower": ("{{ 'AB' | lower }}", "ab"),
    "map": ("{{ ['a', 'b'] | map('upper') | join }}", "AB"),
    "max": ("{{ [1, 3, 2] | max }}", "3"),
    "min": ("{{ [2, 1, 3] | min }}", "1"),
    "pprint": ("{{ [1] | pprint }}", "[1]"),
    "random": ("{{ ['a'] | random }}", "a"),
    "reject": ("{{ [1, 2, 3] | reject('odd') | list }}", "[2]"),
    "rejectattr": ("{{ [dict(a=1), dict(a=0)] | rejectattr('a') | list }}", "[{'a': 0}]"),
    "replace": ("{{ 'aXb' | replace('X', '-') }}", "a-b"),
    "reverse": ("{{ [1, 2] | reverse | list }}", "[2, 1]"),
    "round": ("{{ 2.567 | round(1) }}", "2.6"),
    "safe": ("{{ '<a>' | safe }}", "<a>"),
    "select": ("{{ [1, 2, 3] | select('odd') | list }}", "[1, 3]"),
    "selectattr": ("{{ [dict(a=1), dict(a=0)] | selectattr('a') | list }}", "[{'a': 1}]"),
    "slice": ("{{ [1, 2, 3] | slice(2) | list }}", "[[1, 2], [3]]"),
    "sort": ("{{ [3, 1, 2] | sort }}", "[1, 2, 3]"),
    "string": ("{{ 3 | string }}", "3"),
    "striptags": ("{{ '<b>x</b>  y' | striptags }}", "x y"),
    "sum": ("{{ [1, 2] | sum }}", "3"),
    "title": ("{{ 'ab cd' | title }}", "Ab Cd"),
    "tojson": ("{{ dict(a='x') | tojson }}", '{"a": "x"}'),
    "trim": ("{{ '  a  ' | trim }}", "a"),
    "truncate": ("{{ 'hello world foo' | truncate(9) }}", "hello..."),
    "unique": ("{{ [1, 1, 2] | unique | list }}", "[1, 2]"),
    "upper": ("{{ 'ab' | upper }}", "AB"),
    "urlencode": ("{{ 'a b&c' | urlencode }}", "a%20b%26c"),
    "urlize": ("{{ 'see http://x.org' | urlize }}", 'see <a href="http://x.org" rel="noopener">http://x.org</a>'),
    "wordcount": ("{{ 'a b c' | wordcount }}", "3"),
    "wordwrap": ("{{ 'aaa bbb' | wordwrap(3) }}", "aaa\nbbb"),
    "xmlattr": ("{{ dict(a=1) | xmlattr }}", ' a="1"'),
}

# What jinja2 documents each test gives; tests named by a symbol are used by name (`select('>', 1)`).
TEST_CASES = {
    "boolean": ("{{ true is boolean }}", "True"),
    "callable": ("{{ range is callable }}", "True"),
    "defined": ("{{ dict().k is defined }}", "False"),
    "divisibleby": ("{{ 6 is divisibleby 3 }}", "True"),
    "eq": ("{{ 1 is eq 1 }}", "True"),
    "equalto": ("{{ 1 is equalto 2 }}", "False"),
    "escaped": ("{{ '<a>' | e is escaped }}", "True"),
    "even": ("{{ 2 is even }}", "True"),
    "false": ("{{ false is false }}", "True"),
    "filter": ("{{ 'upper' is filter }}", "True"),
    "float": ("{{ 1.5 is float }}", "True"),
    "ge": ("{{ 2 is ge 2 }}", "True"),
    "greaterthan": ("{{ 2 is greaterthan 1 }}", "True"),
    "gt": ("{{ 1 is gt 2 }}", "False"),
    "in": ("{{ 1 is in [1, 2] }}", "True"),
    "integer": ("{{ 1 is integer }}", "True"),
    "iterable": ("{{ [1] is iterable }}", "True"),
    "le": ("{{ 2 is le 1 }}", "False"),
    "lessthan": ("{{ 1 is lessthan 2 }}", "True"),
    "lower": ("{{ 'ab' is lower }}", "True"),
    "lt": ("{{ 1 is lt 2 }}", "True"),
    "mapping": ("{{ row is mapping }}", "True"),
    "ne": ("{{ 1 is ne 2 }}", "True"),
    "none": ("{{ none is none }}", "True"),
    "number": ("{{ 1.5 is number }}", "True"),
    "odd": ("{{ 3 is odd }}", "True"),
    "sameas": ("{{ none is sameas none }}", "True"),
    "sequence": ("{{ [1] is sequence }}", "True"),
    "string": ("{{ 'a' is string }}", "True"),
    "test": ("{{ 'odd' is test }}", "True"),
    "true": ("{{ true is true }}", "True"),
    "undefined": ("{{ dict().k is undefined }}", "True"),
    "upper": ("{{ 'AB' is upper }}", "True"),
    "!=": ("{{ [1, 2] | select('!=', 1) | list }}", "[2]"),
    "<": ("{{ [1, 2] | select('<', 2) | list }}", "[1]"),
    "<=": ("{{ [1, 2, 3] | select('<=', 2) | list }}", "[1, 2]"),
    "==": ("{{ [1, 2] | select('==', 2) | list }}", "[2]"),
    ">": ("{{ [1, 2] | select('>', 1) | list }}", "[2]"),
    ">=": ("{{ [1, 2, 3] | select('>=', 2) | list }}", "[2, 3]"),
}
BOGUS = {"shuffle", "lipsum", "json", "regex", "regex_replace", "to_json", "fromjson", "len"}


def checker_filters() -> set[str]:
    candidates = set(DEFAULT_FILTERS) | rt.FILTERS | set(FILTER_CASES) | BOGUS
    return {c for c in candidates if "E027" not in codes(template_diags("{{ 'x' | " + c + " }}"))}


def checker_tests() -> set[str]:
    candidates = {t for t in set(DEFAULT_TESTS) | rt.TESTS | set(TEST_CASES) | BOGUS if t.isidentifier()}
    return {c for c in candidates if "E027" not in codes(template_diags("{{ 'x' is " + c + " }}"))}


def test_the_checker_accepts_exactly_the_runtimes_filters() -> None:
    assert checker_filters() == set(FILTER_CASES) == rt.FILTERS


def test_the_checker_accepts_exactly_the_runtimes_tests() -> None:
    assert checker_tests() == {t for t in TEST_CASES if t.isidentifier()}
    assert set(TEST_CASES) == rt.TESTS


@pytest.mark.parametrize("name", sorted(FILTER_CASES))
def test_filters_render_as_documented(name: str) -> None:
    template, want = FILTER_CASES[name]
    ir, diags = check(program(prompt=mx_str(template)))
    assert ir is not None, [d.message for d in diags]
    assert render_prompt(ir) == want


@pytest.mark.parametrize("name", sorted(TEST_CASES))
def test_tests_render_as_documented(name: str) -> None:
    template, want = TEST_CASES[name]
    ir, diags = check(program(prompt=mx_str(template)))
    assert ir is not None, [d.message for d in diags]
    assert render_prompt(ir) == want


# ---- whitespace --------------------------------------------------------------------------------------

# docs/language.md "Templates": whitespace is kept as written; `{%- -%}` trims it. (prompt source, sent)
WHITESPACE_CASES = [
    (mx_str("Q: {{ row.s }}\n"), "Q: 3\n"),
    (mx_str("Q: {{ row.s }}\n\n"), "Q: 3\n\n"),
    (mx_str("  indented {{ row.s }}  "), "  indented 3  "),
    (mx_str("\n\nafter blank lines"), "\n\nafter blank lines"),
    (mx_str("{% if true %}\nyes\n{% endif %}\n"), "\nyes\n\n"),
    (mx_str("  {% for x in row.l %}{{ x }}{% endfor %}\n"), "  ab\n"),
    (mx_str("a  {%- if true -%}  b  {%- endif -%}  \n c"), "abc"),
    (mx_str("\t{{ row.s }}\t\n"), "\t3\t\n"),
    ('"""\n    first\n      second\n\n    third\n  """', "first\n  second\n\nthird"),   # dedented long string
    ('"""\n    line\n\n  """', "line\n"),                  # a blank last line is dropped, the one before it is kept
]


@pytest.mark.parametrize(("source", "want"), WHITESPACE_CASES, ids=[repr(s) for s, _ in WHITESPACE_CASES])
def test_whitespace_is_kept_as_written(source: str, want: str) -> None:
    ir, diags = check(program(prompt=source))
    assert ir is not None, [d.message for d in diags]
    assert render_prompt(ir) == want


def test_templates_are_checked_with_the_runtimes_environment_and_settings() -> None:
    env = environment()
    assert env is rt.ENV
    for key, value in names.TEMPLATE_SETTINGS.items():
        assert getattr(env, key) == value, key


# ---- reserved names and defaults ---------------------------------------------------------------------

@pytest.mark.parametrize("field", names.RESERVED_FIELDS)
def test_reserved_extract_names_agree(field: str) -> None:
    ir, diags = check(program(extract=f'extract {field} = regex(r"(x)")'))
    assert "E026" in codes(diags)
    ok, _ = check(program(extract='extract x = regex(r"(x)")'))
    ok["agents"]["a"]["extracts"][0]["name"] = field
    with pytest.raises(IRError, match="reserved"):
        load_ir(ok)


@pytest.mark.parametrize("field", names.RESERVED_OUTPUT_FIELDS)
def test_reserved_output_fields_agree(field: str) -> None:
    _, diags = check(program(output={field: "row.id"}))
    assert "E046" in codes(diags)
    ir, _ = check(program(output={"v": "row.id"}))
    eng = Engine(ir)
    msg = eng.new_message(json.dumps(ROW), 0, 1000.0)
    assert field in eng.output_row(msg, [])


def test_regex_without_group_warns_and_the_runtime_uses_the_whole_match() -> None:
    ir, diags = check(program(extract='extract x = regex(r"Answer: [A-D]")', output={"v": "a.x"}))
    assert [d.code for d in diags] == ["W006"]
    assert ir is not None
    from matrixlang.runtime.semantics.extract import Extractor

    assert Extractor(ir["agents"]["a"]["extracts"], "a").run("so. Answer: B!") == {"x": "Answer: B"}


def test_defaults_are_the_tables() -> None:
    from matrixlang.runtime.actors.agent import AgentConfig
    from matrixlang.runtime.backends.openai_client import OpenAIModel
    from matrixlang.runtime.backends.serve_deploy import VLLMModel
    from matrixlang.runtime.control.driver import DriverConfig
    from matrixlang.runtime.control.run import RunOptions

    from matrixlang.cli import build_parser

    ir, _ = check(program(output={"v": "row.id"}))
    assert ir["limits"] == names.LIMIT_DEFAULTS
    assert {k: ir["agents"]["a"][k] for k in names.AGENT_DEFAULTS} == names.AGENT_DEFAULTS
    assert {k: ir["models"]["llm"][k] for k in names.MODEL_DEFAULTS} == names.MODEL_DEFAULTS
    assert ir["models"]["llm"]["sim"] == names.SIM_DEFAULTS

    def default(cls: type, name: str) -> Any:
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)

    args = build_parser(["run"]).parse_args(["run", "f.mx", "--input", "i", "--output", "o"])
    assert args.max_in_flight == default(RunOptions, "max_in_flight") == default(DriverConfig, "max_in_flight") \
        == names.MAX_IN_FLIGHT
    assert args.offload_threshold == default(RunOptions, "offload_threshold") \
        == default(AgentConfig, "offload_threshold") == names.OFFLOAD_THRESHOLD
    assert default(AgentConfig, "call_retries") == default(OpenAIModel, "retries") == default(VLLMModel, "retries") \
        == names.RETRIES == names.LIMIT_DEFAULTS["retries"]
    assert default(AgentConfig, "call_timeout_s") == default(OpenAIModel, "timeout_s") \
        == default(VLLMModel, "timeout_s") == names.CALL_TIMEOUT_S == names.LIMIT_DEFAULTS["call_timeout_s"]
    assert default(DriverConfig, "row_attempts") == names.ROW_ATTEMPTS == names.LIMIT_DEFAULTS["row_attempts"]


# ---- imports: the front end reads the runtime's table without Ray; the runtime never reads the front end

def test_the_checker_does_not_import_ray() -> None:
    code = ("import sys, matrixlang.checker, matrixlang.compiler, matrixlang.templates, matrixlang.types\n"
            "assert 'ray' not in sys.modules, 'the checker imports ray'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_runtime_does_not_import_the_front_end() -> None:
    code = ("import sys, matrixlang.runtime.control.run, matrixlang.runtime.semantics.engine, matrixlang.runtime.names\n"
            "bad = sorted(m for m in sys.modules if m.startswith('matrixlang.')\n"
            "             and not m.startswith('matrixlang.runtime'))\n"
            "assert not bad, f'the runtime imports the front end: {bad}'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
