"""`mxc fmt`: canonical layout that never changes what a program means.

Every property is checked against the real parser and compiler: formatting twice changes nothing,
the formatted program compiles to byte-identical IR and parses to the same AST, and every comment
survives, in order. Hand-made messy inputs pin the canonical style exactly; hypothesis mutates the
whitespace and comments of the real workflows and generates random programs.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matrixlang import nodes as n
from matrixlang.cli import main

# Imported before capsys swaps sys.stderr: commands/common.py binds it as a default argument.
from matrixlang.commands import fmt as _fmt_command  # noqa: F401
from matrixlang.compiler import compile_source, dumps
from matrixlang.diagnostics import Diagnostics
from matrixlang.errors import MxError
from matrixlang.formatter import format_source, format_text
from matrixlang.parser import parse
from matrixlang.source import Source

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.mx"))
_SKIP = {"span", "offsets", "op_span", "keyword", "comments"}


def shape(x):
    """An AST as plain data without source positions (what formatting must preserve)."""
    if isinstance(x, list):
        return [shape(i) for i in x]
    if dataclasses.is_dataclass(x):
        return (type(x).__name__, *(shape(getattr(x, f.name)) for f in dataclasses.fields(x) if f.name not in _SKIP))
    if isinstance(x, set):
        return sorted(x)
    return x


def parsed(text: str) -> n.Program:
    diags = Diagnostics()
    prog = parse(Source("t.mx", text), diags)
    assert not diags.has_errors, [d.message for d in diags.items]
    return prog


def assert_preserved(before: str, after: str) -> None:
    """`after` is `before` formatted: a fixed point, same AST, same comments (in order), same IR."""
    assert format_text(after) == after, "formatting is not idempotent"
    p0, p1 = parsed(before), parsed(after)
    assert shape(p1) == shape(p0)
    assert [c.text.rstrip() for c in p1.comments] == [c.text.rstrip() for c in p0.comments]
    ir0, an0 = compile_source(Source("t.mx", before))
    ir1, _ = compile_source(Source("t.mx", after))
    if ir0 is None:
        assert ir1 is None, "formatting fixed a broken program?"
    else:
        assert ir1 is not None and dumps(ir1) == dumps(ir0)


def mxc(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matrixlang", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


# ---- every workflow -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_round_trip(path: Path) -> None:
    before = path.read_text(encoding="utf-8")
    after = format_source(Source.from_path(path))
    assert_preserved(before, after)
    assert compile_source(Source(str(path), after))[0] is not None, f"{path.name} does not compile"


def test_there_are_workflows() -> None:
    assert len(WORKFLOWS) >= 3


# ---- the canonical style, exactly ---------------------------------------------------------------
# Golden pairs in tests/front/fixtures/fmt/: NAME.in.mx (messy) formats to exactly NAME.out.mx.
# `MX_UPDATE_GOLDEN=1 pytest tests/front/test_fmt.py` rewrites the .out.mx files: review the diff.

FMT_DIR = Path(__file__).parent / "fixtures" / "fmt"
FMT_CASES = sorted(FMT_DIR.glob("*.in.mx"))


def fmt_pair(name: str) -> tuple[str, str]:
    """(messy, canonical) texts of a golden pair."""
    return tuple((FMT_DIR / f"{name}.{k}.mx").read_text(encoding="utf-8") for k in ("in", "out"))  # type: ignore[return-value]


def test_there_are_fmt_cases() -> None:
    assert {"comments", "long_lines", "one_line_program", "spacing", "strings"} <= {
        p.name.removesuffix(".in.mx") for p in FMT_CASES}


@pytest.mark.parametrize("path", FMT_CASES, ids=lambda p: p.name.removesuffix(".in.mx"))
def test_canonical_style(path: Path) -> None:
    messy = path.read_text(encoding="utf-8")
    out = format_text(messy)
    golden = path.with_name(path.name.replace(".in.mx", ".out.mx"))
    if os.environ.get("MX_UPDATE_GOLDEN"):
        golden.write_text(out, encoding="utf-8")
    assert out == golden.read_text(encoding="utf-8")
    assert_preserved(messy, out)


def test_strings_are_reindented_with_the_same_value() -> None:
    """Tabs and odd indentation inside triple-quoted strings: re-indented, escapes kept as written."""
    out = format_text(fmt_pair("strings")[0])
    ir = compile_source(Source("s.mx", out))[0]
    assert ir["agents"]["a"]["system"] == 'First line {{ row.id }}\n  indented\n\nlast \\d+ and a "quote"'
    assert ir["agents"]["a"]["sim"] == "    raw \\d+\nkept"


def test_values_that_need_care() -> None:
    """Floats without an exponent, negative literals, and/or nesting, escapes, an empty file."""
    src = ('workflow v\ninput { id: str }\nmodel m { backend = "sim"  temperature = 0.0000001 }\n'
           'agent a { model = m  sim = "a\\"b\\\\c" }\nflow { start -> a  a -> end when (turns > 1 or turns < 0)'
           ' and not (turns == 2 or -turns == -3) }\noutput { x = 10000000000000000.0  y = -(-3)  z = [1, "two", null,] }\n')
    out = format_text(src)
    assert "temperature = 0.0000001 " in out
    assert "x = 10000000000000000.0" in out and "y = 3" in out and 'z = [1, "two", null]' in out
    assert "when (turns > 1 or turns < 0) and not (turns == 2 or -turns == -3)" in out
    assert 'sim = "a\\"b\\\\c"' in out
    assert_preserved(src, out)
    assert format_text("") == ""
    assert format_text("# only a comment\n\n\n# and another") == "# only a comment\n\n# and another\n"


_HEAD = 'workflow x\ninput { id: str }\nmodel m { backend = "sim" }\n'
_TAIL = "flow { start -> a  a -> end }\noutput { id = row.id }\n"
EDGE_CASES = [  # (source, a piece of the expected output)
    ('workflow x\ninput # c1\n { # c2\n id: str }\nmodel # c3\n m # c4\n { backend = "sim" }\n'
     "agent a { model = m }\n" + _TAIL, '# c3\n# c4\nmodel m {\n  backend = "sim"\n}\n'),
    ("workflow x\ninput {}\nlimits {\n}\nmodel m { backend = \"sim\" }\nagent a { model = m  params {} }\n"
     "flow {\n  # nothing yet\n  start -> a\n  a -> end\n}\noutput {\n}\n", "agent a { model = m  params {} }"),
    (_HEAD + 'agent a {\n  model = m\n  extract v = regex(r"""\n     (\\d+)\n       x""")\n}\n'
     'flow { start -> a  a -> end when a.text in ["""\n  one\n  two""", "b"] }\noutput { id = row.id  v = a.v }\n',
     '  a -> end when a.text in ["""\n    one\n    two\n  """, "b"]\n'),
    (_HEAD + 'agent a {\n  model = m\n  system = """\n\n   a  \n\n     b\n\n"""\n}\n' + _TAIL,
     '  system = """\n\n    a  \n\n      b\n\n  """\n'),
    (_HEAD + 'agent a {\n  model = m\n  system = """\\ta\n\\tb"""\n  sim = """say \\"x\\" ok"""\n}\n' + _TAIL,
     '  system = """\n    \\ta\n    \\tb\n  """\n  sim = """say \\"x\\" ok"""\n'),
    (_HEAD + "agent a { model = m }\nflow { start -> a  a -> end when not not (turns > 1) and -(-turns) < 3 and "
     '(turns - (1 - 2)) > 0 and "x" not in [last.agent] }\noutput { id = row.id  h = history[-1].text }\n',
     "when not not turns > 1 and -(-turns) < 3 and turns - (1 - 2) > 0\n"),
    ('workflow x """\n   Describe\n     me\n"""  # trailing\n' + _HEAD[11:] + "agent a { model = m }\n" + _TAIL,
     'workflow x """\n  Describe\n    me\n"""  # trailing\n'),
    (_HEAD + "agent a { model = m }\n" + _TAIL.rstrip("\n") + " # no newline", "output { id = row.id }  # no newline\n"),
]


@pytest.mark.parametrize("source, piece", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_edge_cases(source: str, piece: str) -> None:
    out = format_text(source)
    assert piece in out
    assert_preserved(source, out)


def test_syntax_errors_are_not_formatted() -> None:
    with pytest.raises(MxError) as exc:
        format_text('workflow x\nagent a {\n  model = \n}\n')
    assert exc.value.diagnostics and exc.value.diagnostics[0].code.startswith("E00")


# ---- the command ------------------------------------------------------------------------------

def test_cli_check_write_and_print(tmp_path: Path, capsys) -> None:
    messy, expected = fmt_pair("spacing")
    bad = tmp_path / "messy.mx"
    good = tmp_path / "good.mx"
    bad.write_text(messy)
    good.write_text(expected)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    assert run("fmt", "--check", str(good)) == (0, "", "")
    code, out, _ = run("fmt", "--check", str(bad), str(good))
    assert code == 1 and out.splitlines() == [f"would reformat {bad}"]
    assert bad.read_text() == messy, "--check must not write"
    assert run("fmt", str(bad))[:2] == (0, expected)
    code, out, _ = run("fmt", "--diff", str(bad))
    assert code == 1 and "+output { id = row.id  n = -3 + -2 * (1 + 2)" in out

    code, _, err = run("fmt", "--write", str(bad), str(good))
    assert code == 0 and f"reformatted {bad}" in err and str(good) not in err
    assert bad.read_text() == expected
    assert run("fmt", "--check", str(bad), str(good))[0] == 0


def test_cli_entry_point_reads_stdin() -> None:
    messy, expected = fmt_pair("spacing")
    r = mxc("fmt", "-", stdin=messy)
    assert (r.returncode, r.stdout) == (0, expected)
    r = mxc("fmt", "--check", "-", stdin=messy)
    assert (r.returncode, r.stdout) == (1, "would reformat -\n")


def test_cli_refuses_broken_files_and_bad_usage(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.mx"
    text = 'workflow x\ninput { id: str }\nagent a {\n  model = \n}\n'
    broken.write_text(text)
    for args in (["fmt", str(broken)], ["fmt", "--write", str(broken)], ["fmt", "--check", str(broken)]):
        assert main(args) == 1, args
        out, err = capsys.readouterr()
        assert f"{broken}:5:1: error[E001]" in err and "not formatted" in err
        assert out == ""
    assert broken.read_text() == text
    assert main(["fmt", str(broken), str(broken)]) == 2  # several files need a mode
    with pytest.raises(SystemExit) as exc:
        main(["fmt", "--check", "--write", str(broken)])
    assert exc.value.code == 2
    assert main(["fmt", "--check", str(tmp_path / "missing.mx")]) == 1


def test_cli_crlf_file_is_rewritten_with_newlines(tmp_path: Path) -> None:
    f = tmp_path / "crlf.mx"
    f.write_bytes(b'workflow x "y"\r\n\r\ninput { a: str }\r\n')
    assert main(["fmt", "--check", str(f)]) == 1
    assert main(["fmt", "-w", str(f)]) == 0
    assert f.read_bytes() == b'workflow x "y"\n\ninput { a: str }\n'


# ---- hypothesis: mutated workflows ------------------------------------------------------------

_PIECES = re.compile(r'r?"""[\s\S]*?"""|r?"(?:[^"\\\n]|\\.)*"|#[^\n]*|\s+|[^\s"#r]+|r')


def _code_and_gaps(text: str) -> list[str]:
    """Alternating code chunks and gaps (whitespace and comments); even indexes are code."""
    out = [""]
    for m in _PIECES.finditer(text):
        piece = m.group(0)
        is_gap = piece.isspace() or piece.startswith("#")
        if is_gap != (len(out) % 2 == 0):
            out.append("")
        out[-1] += piece
    return out if len(out) % 2 else [*out, ""]


_GAPS = [" ", "  ", "\n", "\n\n\n", "\t", " \n  ", "  # note\n", "\n# own line\n", " #x\n\n", "\n  # a\n  # b\n   "]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(WORKFLOWS), st.randoms(use_true_random=False))
def test_mutated_workflows_format_to_the_same_program(path: Path, rnd: random.Random) -> None:
    parts = _code_and_gaps(path.read_text(encoding="utf-8"))
    for k in range(1, len(parts) - 1, 2):
        parts[k] = rnd.choice(_GAPS) if rnd.random() < 0.4 else parts[k]
    messy = "".join(parts)
    out = format_text(messy)
    assert_preserved(messy, out)


# ---- hypothesis: random programs --------------------------------------------------------------

names = st.sampled_from(["alpha", "beta", "gamma"])
ws = st.sampled_from([" ", "  ", "\n", " \n   ", "\n\n", "\t"])
cmt = st.sampled_from(["", "", "", "  # c\n", "\n# own\n"])


@st.composite
def string_lit(draw) -> str:
    words = draw(st.lists(st.sampled_from(["hi", "{{ row.id }}", "tab\\there", 'q\\"t', "a\\\\b", "  x", "é"]),
                          min_size=1, max_size=4))
    style = draw(st.sampled_from(["plain", "raw", "long", "longblock"]))
    if style == "plain":
        return '"' + " ".join(words) + '"'
    if style == "raw":
        return 'r"' + " ".join(w.replace("\\", "").replace('"', "") for w in words) + '"'
    if style == "long":
        return '"""' + " ".join(words).strip() + '"""'
    pad = draw(st.sampled_from(["", "  ", "    ", "\t"]))
    lines = [pad + " " * draw(st.integers(0, 3)) + w for w in words]
    return '"""\n' + "\n".join(lines) + "\n" + draw(st.sampled_from(["", "  "])) + '"""'


@st.composite
def int_expr(draw, depth: int = 2) -> str:
    leaves = ["turns", "visits.alpha", "len(row.q)", "len(alpha.text)", str(draw(st.integers(-50, 50)))]
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from(leaves))
    op = draw(st.sampled_from(["+", "-", "*"]))
    a, b = draw(int_expr(depth - 1)), draw(int_expr(depth - 1))
    text = f"{a}{draw(ws)}{op} {b}"
    return f"({text})" if draw(st.booleans()) else text


@st.composite
def bool_expr(draw, depth: int = 2) -> str:
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        kind = draw(st.integers(0, 3))
        if kind == 0:
            return f"{draw(int_expr())} {draw(st.sampled_from(['<', '<=', '==', '!=', '>', '>=']))} {draw(int_expr())}"
        if kind == 1:
            return f"alpha.ans {draw(st.sampled_from(['==', '!=']))} null"
        if kind == 2:
            return f'row.q contains "{draw(st.sampled_from(["a", "b c"]))}"'
        return 'alpha.text matches r"^\\d+$"'
    if draw(st.booleans()):
        return f"not ({draw(bool_expr(depth - 1))})"
    op = draw(st.sampled_from(["and", "or"]))
    text = f"{draw(bool_expr(depth - 1))}{draw(ws)}{op} {draw(bool_expr(depth - 1))}"
    return f"({text})" if draw(st.booleans()) else text


@st.composite
def block(draw, header: str, items: list[str]) -> str:
    if draw(st.booleans()):
        return f"{header} {{ " + "  ".join(items) + " }"
    return f"{header} {{{draw(cmt)}\n" + "".join(f"{draw(ws)}{it}{draw(cmt)}\n" for it in items) + "}"


@st.composite
def program(draw) -> str:
    agents = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    if "alpha" not in agents:
        agents = ["alpha", *agents]
    decls = [f'workflow rnd {draw(string_lit())}',
             draw(block("input", ["id: str", "q: str", f"n: {draw(st.sampled_from(['int', 'int?', 'list[str]']))}"])),
             draw(block("model m", ['backend = "sim"', "tokens = 1..5",
                                    f"temperature = {draw(st.sampled_from(['0.5', '1', '0.25']))}"]))]
    for a in agents:
        items = ["model = m", f"system = {draw(string_lit())}", f"sim = {draw(string_lit())}"]
        if a == "alpha":
            items.append('extract ans = regex(r"(\\d+)")')
        if draw(st.booleans()):
            items.append("params { max_tokens = 8 }")
        decls.append(draw(block(f"agent {a}", items)))
    flow = [f"start -> {agents[0]}"]
    for i, a in enumerate(agents):
        for _ in range(draw(st.integers(0, 2))):
            target = draw(st.sampled_from([*agents, "end", 'fail "why"']))
            flow.append(f"{a} -> {target} when {draw(bool_expr())}")
        flow.append(f"{a} -> {agents[i + 1] if i + 1 < len(agents) else 'end'}")
    decls.append(draw(block("flow", flow)))
    decls.append(draw(block("output", ["id = row.id", f"x = {draw(int_expr())}", f"ok = {draw(bool_expr())}",
                                       "ans = alpha.ans"])))
    return "".join(d + draw(st.sampled_from(["\n", "\n\n", " ", "\n# between\n"])) for d in decls)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program())
def test_random_programs_format_to_the_same_program(text: str) -> None:
    ir, an = compile_source(Source("r.mx", text))
    assert ir is not None, [d.message for d in an.diags.items if d.is_error]
    out = format_text(text)
    assert_preserved(text, out)
