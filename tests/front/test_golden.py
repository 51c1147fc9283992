"""Golden diagnostics (starlark-go style): broken programs with the expected diagnostics inline.

Each `tests/front/golden/NAME.mx` carries its expectations as `###` comments on the line that causes
them (several per line allowed, each starting with `###`)::

    teacher -> studnet   ### E031 @14+7 "unknown state `studnet`" help="did you mean `student`?"

- `CODE` (`E031`, `W001`) is the diagnostic's code;
- `@COL` its 1-based column on the marker's line; `@LINE:COL` another line, absolute (`@1:1`) or
  relative (`@-1:12`, `@+2:3`) — for diagnostics inside a `\"\"\"` string or on a line that
  cannot hold a comment; `+LEN` (optional) the caret's width on that line;
- an optional quoted substring of the message and `help="..."`, a substring of the help line
  (quotes as in a shell: `\\"` inside). `help=-` asserts there is no help line.

The runner checks the exact multiset of (line, column, code) — nothing extra, nothing missing — and
every substring. A file without markers must check clean.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from matrixlang.checker import check
from matrixlang.diagnostics import CODES, Diagnostic, render_text
from matrixlang.source import Source

GOLDEN = Path(__file__).parent / "golden"
FILES = sorted(GOLDEN.glob("*.mx"))
MARK = re.compile(r"(?:^|\s)###(.*)$")
POS = re.compile(r"@(?:(?P<line>[+-]?\d+):)?(?P<col>\d+)(?:\+(?P<len>\d+))?$")


@dataclass(frozen=True)
class Expect:
    where: str  # file:line of the marker, for messages
    code: str
    line: int
    col: int
    length: int | None
    message: str | None
    help: str | None

    @property
    def key(self) -> tuple[int, int, str]:
        return self.line, self.col, self.code


def parse_markers(text: str, name: str = "<golden>") -> list[Expect]:
    """The expectations written in a golden file."""
    out: list[Expect] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        m = MARK.search(line)
        if not m:
            continue
        for item in m.group(1).split("###"):
            words = shlex.split(item)
            if not words:
                continue
            where = f"{name}:{lineno}"
            code, rest = words[0], words[1:]
            if code not in CODES:
                raise ValueError(f"{where}: unknown code {code!r} in marker")
            if not rest or not (p := POS.match(rest[0])):
                raise ValueError(f"{where}: marker {code} needs a position @COL or @LINE:COL")
            target = p.group("line")
            if target is None:
                at = lineno
            elif target[0] in "+-":
                at = lineno + int(target)
            else:
                at = int(target)
            message = help_ = None
            for w in rest[1:]:
                if w.startswith("help="):
                    help_ = w[5:]
                elif message is None:
                    message = w
                else:
                    raise ValueError(f"{where}: unexpected {w!r} in marker")
            length = int(p.group("len")) if p.group("len") else None
            out.append(Expect(where, code, at, int(p.group("col")), length, message, help_))
    return out


def _actual(src: Source) -> list[tuple[tuple[int, int, str], Diagnostic, int]]:
    rows = []
    for d in check(src).diags.sorted():
        line, col = src.line_col(d.span.start)
        end_line, end_col = src.line_col(d.span.end)
        width = (end_col - col) if end_line == line else len(src.line_text(line)) + 1 - col
        rows.append(((line, col, d.code), d, width))
    return rows


def verify(path: Path) -> list[str]:
    """Every mismatch between a golden file and what `check` reports (empty: it matches)."""
    src = Source.from_path(path)
    expects = parse_markers(src.text, path.name)
    actual = _actual(src)
    want = Counter(e.key for e in expects)
    got = Counter(k for k, _, _ in actual)
    problems: list[str] = []
    for key in sorted((want - got).elements()):
        problems.append(f"missing: {key[2]} at {key[0]}:{key[1]}")
    for key in sorted((got - want).elements()):
        d = next(d for k, d, _ in actual if k == key)
        problems.append(f"unexpected: {key[2]} at {key[0]}:{key[1]}: {d.message}")
    for e in expects:
        cands = [(d, w) for k, d, w in actual if k == e.key]
        if not cands:
            continue
        ok = [(d, w) for d, w in cands
              if (e.message is None or e.message in d.message)
              and (e.help is None or (e.help == "-" and d.help is None)
                   or (e.help != "-" and d.help is not None and e.help in d.help))
              and (e.length is None or e.length == w)]
        if not ok:
            d, w = cands[0]
            problems.append(f"{e.where}: {e.code} at {e.line}:{e.col}: got message {d.message!r}, help "
                            f"{d.help!r}, width {w}; want message ~{e.message!r}, help ~{e.help!r}, "
                            f"width {e.length}")
    if problems:
        problems.append("rendered:\n" + render_text(check(src).diags.sorted(), src))
    return problems


def test_there_are_enough_golden_files() -> None:
    assert len(FILES) >= 40


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_golden(path: Path) -> None:
    problems = verify(path)
    assert not problems, "\n".join(problems)


def test_every_code_has_a_golden_case() -> None:
    covered = {e.code for p in FILES for e in parse_markers(p.read_text(encoding="utf-8"), p.name)}
    assert covered == set(CODES), f"not covered: {sorted(set(CODES) - covered)}"


# ---- the runner itself must be able to fail ----------------------------------------------------

PROGRAM = '''workflow w "d"
input { id: str }
model llm { backend = "sim" }
agent a { model = llm }
flow {
  start -> a
  a -> b{marker}
}
output { id = row.id }
'''


def _verify_text(tmp_path: Path, marker: str) -> list[str]:
    p = tmp_path / "case.mx"
    p.write_text(PROGRAM.replace("{marker}", marker), encoding="utf-8")
    return verify(p)


def test_runner_accepts_the_exact_diagnostic(tmp_path: Path) -> None:
    assert _verify_text(tmp_path, '   ### E031 @8+1 "unknown state `b`" help="agents are a"') == []


@pytest.mark.parametrize("marker, complaint", [
    ("", "unexpected: E031 at 7:8"),                                   # a diagnostic nobody expected
    ("   ### E031 @9", "missing: E031 at 7:9"),                        # wrong column
    ("   ### E031 @8 ### E031 @8", "missing: E031 at 7:8"),            # expected twice, reported once
    ("   ### E031 @-1:8", "missing: E031 at 6:8"),                     # wrong line
    ('   ### E031 @8 "unknown agent"', "want message ~'unknown agent'"),
    ('   ### E031 @8 help="did you mean"', "want message ~None, help ~'did you mean'"),
    ("   ### E031 @8 help=-", "help ~'-'"),
    ("   ### E031 @8+3", "width 3"),
])
def test_runner_rejects_mismatches(tmp_path: Path, marker: str, complaint: str) -> None:
    problems = _verify_text(tmp_path, marker)
    assert any(complaint in p for p in problems), problems


def test_markers_parse_positions_and_quotes() -> None:
    text = 'a\nb   ### E001 @3+2 "say \\"hi\\"" help="x y" ### W001 @-1:4\n### E010 @1:1'
    got = parse_markers(text)
    assert [(e.code, e.line, e.col, e.length, e.message, e.help) for e in got] == [
        ("E001", 2, 3, 2, 'say "hi"', "x y"), ("W001", 1, 4, None, None, None), ("E010", 1, 1, None, None, None)]
    with pytest.raises(ValueError, match="needs a position"):
        parse_markers("x ### E001")
    with pytest.raises(ValueError, match="unknown code"):
        parse_markers("x ### E999 @1")
