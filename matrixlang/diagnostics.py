"""Diagnostics: a code, a severity, a primary span, secondary labels and a help line.

Rendered like rustc / Elm::

    coral.mx:40:22: error[E040]: unknown name `studnet`
       |
    40 |   teacher -> studnet
       |              ^~~~~~~
       = help: did you mean `student`?
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from .source import Source, Span


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


# Every diagnostic code, with a one-line title; docs/language.md explains each one.
CODES: dict[str, str] = {
    # lexical and syntax
    "E001": "syntax error",
    "E002": "unterminated string",
    "E003": "invalid escape sequence",
    "E004": "unexpected character",
    "E005": "keyword or reserved word used as a name",
    "E006": "unclosed brace",
    # declarations
    "E010": "missing `workflow` declaration",
    "E011": "declaration given more than once",
    "E012": "missing `flow` declaration",
    "E013": "duplicate name",
    "E014": "duplicate key or field",
    "E015": "unknown key in a block",
    "E016": "missing required key",
    "E017": "value of the wrong kind for its key",
    "E018": "bad duration or size",
    "E019": "bad range",
    "E020": "unknown type",
    "E021": "agent with neither `model` nor `tool`",
    "E022": "agent with both `model` and `tool`",
    "E023": "unknown model or tool",
    "E024": "key not allowed for this kind of agent",
    "E025": "bad regular expression",
    "E026": "bad extract",
    "E027": "template syntax error",
    "E028": "unknown backend or tool kind",
    "E029": "missing `input` declaration",
    # flow
    "E030": "missing `start` transition",
    "E031": "transition to or from an unknown state",
    "E032": "transition after an unconditional one (dead code)",
    "E033": "unreachable agent",
    "E034": "agent with no path to `end` or `fail`",
    "E035": "cycle that no transition leaves",
    "E036": "transition from a final state",
    "E037": "`fail` without a reason",
    # expressions, guards, templates, output
    "E040": "unknown name",
    "E041": "unknown field of an agent",
    "E042": "unknown input field",
    "E043": "type error",
    "E044": "unknown function or wrong number of arguments",
    "E045": "expression not allowed here",
    "E046": "reserved output field",
    # warnings
    "W001": "extract never read",
    "W002": "state without an unconditional fallback",
    "W003": "key has no effect for this backend",
    "W004": "model or tool never used",
    "W005": "comparison is always false",
    "W006": "regex extract without a capture group",
}


@dataclass(slots=True)
class Label:
    """A secondary location with a short message (e.g. "first declared here")."""

    span: Span
    message: str


@dataclass(slots=True)
class Diagnostic:
    code: str
    message: str
    span: Span
    severity: Severity = Severity.ERROR
    help: str | None = None
    labels: list[Label] = field(default_factory=list)

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def to_dict(self, source: Source) -> dict:
        line, col = source.line_col(self.span.start)
        end_line, end_col = source.line_col(self.span.end)
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "file": source.path,
            "line": line,
            "column": col,
            "end_line": end_line,
            "end_column": end_col,
            "help": self.help,
            "labels": [
                {"message": lb.message, "line": source.line_col(lb.span.start)[0],
                 "column": source.line_col(lb.span.start)[1]}
                for lb in self.labels
            ],
        }


class Diagnostics:
    """An ordered collection the phases append to."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def error(self, code: str, message: str, span: Span, help: str | None = None,
              labels: Iterable[Label] = ()) -> Diagnostic:
        return self._add(Diagnostic(code, message, span, Severity.ERROR, help, list(labels)))

    def warning(self, code: str, message: str, span: Span, help: str | None = None,
                labels: Iterable[Label] = ()) -> Diagnostic:
        return self._add(Diagnostic(code, message, span, Severity.WARNING, help, list(labels)))

    def _add(self, d: Diagnostic) -> Diagnostic:
        assert d.code in CODES, d.code
        self.items.append(d)
        return d

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.items)

    def sorted(self) -> list[Diagnostic]:
        return sorted(self.items, key=lambda d: (d.span.start, d.code))


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A `help:` text suggesting the closest candidate, or None."""
    cands = sorted(set(candidates))
    match = difflib.get_close_matches(name, cands, n=1, cutoff=0.6)
    if not match:
        lowered = {c.lower(): c for c in cands}
        if name.lower() in lowered:
            match = [lowered[name.lower()]]
    return f"did you mean `{match[0]}`?" if match else None


def one_of(words: Iterable[str]) -> str:
    """`a`, `b` or `c` — a list in words."""
    ws = [f"`{w}`" for w in words]
    if len(ws) <= 1:
        return "".join(ws)
    return ", ".join(ws[:-1]) + " or " + ws[-1]


# ---- rendering ------------------------------------------------------------------------------

def render_text(diags: Iterable[Diagnostic], source: Source, color: bool = False) -> str:
    return "".join(render_one(d, source, color) for d in diags)


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def render_one(d: Diagnostic, source: Source, color: bool = False) -> str:
    line, col = source.line_col(d.span.start)
    end_line, end_col = source.line_col(max(d.span.start, d.span.end))
    sev = d.severity.value
    sev_col = "1;31" if d.is_error else "1;33"
    out = [f"{source.path}:{line}:{col}: {_paint(f'{sev}[{d.code}]', sev_col, color)}: {d.message}\n"]
    out += _snippet(source, line, col, end_line, end_col, color, sev_col)
    for lb in d.labels:
        lline, lcol = source.line_col(lb.span.start)
        lend_line, lend_col = source.line_col(max(lb.span.start, lb.span.end))
        out += _snippet(source, lline, lcol, lend_line, lend_col, color, "1;34", lb.message, marker="-")
    if d.help:
        out.append(f"{' ' * _gutter(source)}= {_paint('help', '1', color)}: {d.help}\n")
    return "".join(out)


def _gutter(source: Source) -> int:
    return len(str(source.line_count)) + 1


def _snippet(source: Source, line: int, col: int, end_line: int, end_col: int, color: bool,
             sev_col: str, message: str | None = None, marker: str = "^") -> list[str]:
    text = source.line_text(line) if line <= source.line_count else ""
    width = _gutter(source)
    # A span that runs onto later lines is underlined to the end of its first line.
    last = end_col if end_line == line else len(text) + 1
    n = max(1, last - col)
    underline = (marker + ("~" if marker == "^" else "-") * (n - 1)) if n > 1 else marker
    pad = "".join(ch if ch == "\t" else " " for ch in text[: col - 1])
    tail = f" {message}" if message else ""
    return [
        f"{' ' * width}|\n",
        f"{str(line).rjust(width - 1)} | {text}\n",
        f"{' ' * width}| {pad}{_paint(underline + tail, sev_col, color)}\n",
    ]


def render_json(diags: Iterable[Diagnostic], source: Source) -> str:
    return json.dumps([d.to_dict(source) for d in diags], indent=2)
