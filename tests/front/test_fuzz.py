"""Fuzzing the front end (hypothesis): whatever the input, `check` returns diagnostics inside the file,
never an exception, and `mxc check` never reports an internal error.

Three sources of input: random text over the language's characters, token soup drawn from the
grammar's own terminals, and mutations (delete, duplicate, swap: characters, lines, tokens) of the
programs in `workflows/`.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
from functools import cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lark.lexer import PatternStr

from matrixlang import cli
from matrixlang.checker import check
from matrixlang.compiler import build_ir, dumps
from matrixlang.diagnostics import CODES, render_json, render_text
from matrixlang.parser import _lark
from matrixlang.source import Source

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.mx"))
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_sane(text: str) -> None:
    """`check` accepts any text; its diagnostics point inside it and render; clean programs compile."""
    src = Source("fuzz.mx", text)
    an = check(src)
    n = len(src.text)
    for d in an.diags.items:
        assert d.code in CODES
        assert d.message
        for span in [d.span, *(lb.span for lb in d.labels)]:
            assert 0 <= span.start <= span.end <= n, (d.code, d.message, span, n)
    render_text(an.diags.sorted(), src)
    json.loads(render_json(an.diags.sorted(), src))
    if an.ok:
        json.loads(dumps(build_ir(an)))


def assert_cli_sane(text: str) -> None:
    """In-process `mxc check --format json`: exit 0 or 1, JSON out, never "internal error"."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.mx"
        path.write_text(text, encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(["check", "--format", "json", str(path)])
    assert "internal error" not in err.getvalue(), err.getvalue()
    assert status in (0, 1), (status, err.getvalue())
    json.loads(out.getvalue())


# ---- random text --------------------------------------------------------------------------------

CHARS = st.sampled_from(list('abcdefghijklmnopqrstuvwxyz_ABCXYZ0123456789 \t\n\r{}[]()<>=!&|.,:;"\'#\\-+*/%?r`→é'))


@FUZZ
@given(st.text(CHARS, max_size=300))
def test_random_text(text: str) -> None:
    assert_sane(text)


# ---- token soup from the grammar's terminals ----------------------------------------------------

@cache
def _terminal_strategies() -> tuple[st.SearchStrategy[str], ...]:
    out = []
    for t in _lark().terminals:
        if t.name in ("WS", "COMMENT"):
            continue
        if isinstance(t.pattern, PatternStr):
            out.append(st.just(t.pattern.value))
        else:
            out.append(st.from_regex(re.compile(t.pattern.to_regexp()), fullmatch=True).filter(lambda s: len(s) < 40))
    return tuple(out)


TEMPLATE_PARTS = st.sampled_from(["{{", "}}", "{%", "%}", " row.", "q", " if ", " endif ", " for x in ",
                                  " endfor ", " | upper", " | nofilter", "last.text", "a.b", "(", "'", " "])
TEMPLATE = st.lists(TEMPLATE_PARTS, max_size=12).map(lambda ps: '"' + "".join(ps).replace('"', "") + '"')
SEPARATOR = st.sampled_from([" ", " ", "\n", "  ", "\n  ", " # note\n"])


@st.composite
def token_soup(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.one_of(*_terminal_strategies(), TEMPLATE), max_size=60))
    return "".join(tok + draw(SEPARATOR) for tok in tokens)


@FUZZ
@given(token_soup())
def test_token_soup(text: str) -> None:
    assert_sane(text)


# ---- mutations of real programs -----------------------------------------------------------------

TOKEN = re.compile(r'r?"""[\s\S]*?"""|r?"(?:[^"\\\n]|\\.)*"|\w+|->|==|!=|<=|>=|\.\.|\S')


def _pieces(text: str, unit: str) -> list[str]:
    if unit == "line":
        return text.splitlines(keepends=True)
    if unit == "token":
        out, pos = [], 0
        for m in TOKEN.finditer(text):
            out += [text[pos:m.start()], m.group(0)]
            pos = m.end()
        return [p for p in out + [text[pos:]] if p]
    return list(text)


LITERALS = st.sampled_from(['5', '0', '-1', '1.5', '"x"', '""', 'r"("', '10s', '10sec', '2MB', 'true', 'null',
                            '[1, "a"]', '[]', '3..1', 'env("X")', 'env(1)', 'row', 'turns', 'foo', 'regex("(")'])
LITERAL_TOKEN = re.compile(r'r?".*|\d.*|true|false|null')


def _mutate_value(draw: st.DrawFn, parts: list[str]) -> None:
    """A literal replaced by a literal of another kind (`name = 5`, `temperature = "x"`, `tokens = 3..1`)."""
    spots = [k for k, t in enumerate(parts) if LITERAL_TOKEN.fullmatch(t)]
    if spots:
        parts[draw(st.sampled_from(spots))] = draw(LITERALS)


def _mutate_string(draw: st.DrawFn, parts: list[str]) -> None:
    """One character deleted or doubled inside a string: broken templates, regexes and escapes."""
    spots = [k for k, t in enumerate(parts) if t.startswith(('"', 'r"')) and len(t) > 3]
    if spots:
        k = draw(st.sampled_from(spots))
        t = parts[k]
        c = draw(st.integers(2, len(t) - 2))
        parts[k] = t[:c] + t[c + 1:] if draw(st.booleans()) else t[:c] + t[c] + t[c:]


@st.composite
def mutated_program(draw: st.DrawFn) -> str:
    text = WORKFLOWS[draw(st.integers(0, len(WORKFLOWS) - 1))].read_text(encoding="utf-8")
    for _ in range(draw(st.integers(1, 4))):
        unit = draw(st.sampled_from(["value", "string", "token", "line", "char", "token"]))
        if unit in ("value", "string"):
            parts = _pieces(text, "token")
            (_mutate_value if unit == "value" else _mutate_string)(draw, parts)
            text = "".join(parts)
            continue
        parts = _pieces(text, unit)
        if not parts:
            break
        i = draw(st.integers(0, len(parts) - 1))
        j = draw(st.integers(0, len(parts) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "insert"]))
        if op == "delete":
            del parts[i]
        elif op == "duplicate":
            parts.insert(i, parts[i])
        elif op == "swap":
            parts[i], parts[j] = parts[j], parts[i]
        elif op == "replace":  # by another piece of the same program: mistakes that stay plausible
            parts[i] = parts[j]
        else:
            parts.insert(i, draw(st.one_of(*_terminal_strategies())) + " ")
        text = "".join(parts)
    return text


@settings(FUZZ, max_examples=250)
@given(mutated_program())
def test_mutated_programs(text: str) -> None:
    assert_sane(text)


@settings(FUZZ, max_examples=60)
@given(st.one_of(mutated_program(), token_soup()))
def test_cli_never_reports_internal_errors(text: str) -> None:
    assert_cli_sane(text)


def test_the_workflows_are_clean() -> None:
    """The mutations start from programs that check without a diagnostic."""
    assert WORKFLOWS
    for p in WORKFLOWS:
        an = check(Source.from_path(p))
        assert an.diags.items == [], (p.name, [d.message for d in an.diags.items])
