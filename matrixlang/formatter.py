"""Canonical formatting of `.mx` programs (`mxc fmt`): the same program, laid out one way.

The rules, all deterministic:
- declarations in source order, one blank line between them;
- two spaces of indentation; one setting, field, extract or transition per line;
- a block written on one line stays on one line (items separated by two spaces) while it fits in
  `WIDTH` columns; any other block is laid out one item per line;
- inside blocks, a blank line between items is kept (runs of blank lines become one);
- expressions and strings are printed by `printer`: canonical spacing, parentheses only where
  needed, strings in the style they were written in (raw stays raw), multi-line triple-quoted
  strings re-indented to their line's indentation + 2 (the language dedents them: same value);
- comments stay with the line they trail or the line they precede; a comment inside a construct
  that is now printed on one line moves just above it.

Formatting never changes what a program means: the result parses to the same AST and compiles to
the same IR, and formatting it again changes nothing.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from . import nodes as n
from .diagnostics import Diagnostics
from .errors import InternalError, MxError
from .parser import parse
from .printer import expr, string
from .source import Source

WIDTH = 100
INDENT = "  "
CONTINUATION = "    "  # extra indentation of the lines a long expression breaks into


@dataclass(slots=True)
class _Unit:
    """The output lines of one piece of source [start, end): a block's opening line, one item (maybe
    several lines, for multi-line strings), a closing brace, or a whole one-line block."""

    start: int
    end: int
    lines: list[str]
    depth: int
    kind: str = "item"  # "open" | "item" | "close"
    decl: bool = False  # the first unit of a top-level declaration
    leading: list[n.Comment] = field(default_factory=list)
    trailing: n.Comment | None = None


def format_source(source: Source) -> str:
    """The canonical text of a program; raises MxError (with the diagnostics) if it does not parse."""
    diags = Diagnostics()
    program = parse(source, diags)
    if diags.has_errors:
        raise MxError([d for d in diags.sorted() if d.is_error])
    return _Layout(source.text).program(program)


def format_text(text: str, path: str = "<text>") -> str:
    """`format_source` for a string."""
    return format_source(Source(path, text))


class _Layout:
    def __init__(self, text: str):
        self.text = text
        self.items = _Items(text)
        self.units: list[_Unit] = []

    # ---- declarations → units ----------------------------------------------------------------

    def program(self, program: n.Program) -> str:
        for d in program.decls:
            first = len(self.units)
            self._decl(d)
            self.units[first].decl = True
        tail = self._attach(program.comments)
        return self._emit(tail)

    def _decl(self, d: n.Decl) -> None:
        if isinstance(d, n.Workflow):
            self._item(d, 0)
        elif isinstance(d, n.Input):
            self._block("input", d.keyword.end, d.fields, d.span, 0)
        elif isinstance(d, n.Limits):
            self._block("limits", d.keyword.end, d.settings, d.span, 0)
        elif isinstance(d, (n.Model, n.Tool, n.Agent)):
            word = {n.Model: "model", n.Tool: "tool", n.Agent: "agent"}[type(d)]
            body = d.items if isinstance(d, n.Agent) else d.settings
            self._block(f"{word} {d.name.value}", d.name.span.end, body, d.span, 0)
        elif isinstance(d, n.Flow):
            self._block("flow", d.keyword.end, d.transitions, d.span, 0)
        elif isinstance(d, n.Output):
            self._block("output", d.keyword.end, d.fields, d.span, 0)
        else:
            raise InternalError(f"cannot format a {type(d).__name__}")

    def _block(self, header: str, after: int, items: list, span, depth: int) -> None:
        pad = INDENT * depth
        one_line = self._one_line(header, items, span)
        if one_line is not None and len(pad) + len(one_line) <= WIDTH:
            self.units.append(_Unit(span.start, span.end, [pad + one_line], depth))
            return
        lbrace = self._brace(after)
        self.units.append(_Unit(span.start, lbrace + 1, [f"{pad}{header} {{"], depth, "open"))
        for it in items:
            if isinstance(it, n.Params):
                self._block("params", it.span.start + len("params"), it.settings, it.span, depth + 1)
            else:
                self._item(it, depth + 1)
        self.units.append(_Unit(span.end - 1, span.end, [pad + "}"], depth, "close"))

    def _one_line(self, header: str, items: list, span) -> str | None:
        """The block on one line, if its source was on one line."""
        if "\n" in self.text[span.start : span.end]:
            return None
        parts = []
        for it in items:
            if isinstance(it, n.Params):
                parts.append(self._one_line("params", it.settings, it.span))
            else:
                parts.append(self.items.line(it))
            if parts[-1] is None or "\n" in parts[-1]:
                return None
        return f"{header} {{ {'  '.join(parts)} }}" if parts else f"{header} {{}}"

    def _item(self, node: n.Node, depth: int) -> None:
        lines = self.items.lines(node, INDENT * depth)
        self.units.append(_Unit(node.span.start, node.span.end, lines, depth))

    def _brace(self, pos: int) -> int:
        """Offset of the `{` that opens a block: only blanks and comments come before it."""
        t = self.text
        while pos < len(t):
            if t[pos] == "{":
                return pos
            if t[pos] == "#":
                pos = t.find("\n", pos)
                if pos < 0:
                    break
            pos += 1
        raise InternalError("block without `{`")

    # ---- comments ----------------------------------------------------------------------------

    def _attach(self, comments: list[n.Comment]) -> list[n.Comment]:
        """Give each comment to a unit: trailing (code before it on its line) or leading (own line,
        or inside a unit whose source spans several lines). Returns the comments after the last unit."""
        starts = [u.start for u in self.units]
        ends = [u.end for u in self.units]
        tail: list[n.Comment] = []
        for c in comments:
            line_start = self.text.rfind("\n", 0, c.span.start) + 1
            before = bisect.bisect_left(starts, c.span.start) - 1  # the last unit starting before c
            if self.text[line_start : c.span.start].strip() and before >= 0:
                u = self.units[before]
                if u.end <= c.span.start and u.trailing is None:
                    u.trailing = c
                else:
                    u.leading.append(c)
                continue
            i = bisect.bisect_right(ends, c.span.start)
            if i < len(self.units):
                self.units[i].leading.append(c)
            else:
                tail.append(c)
        return tail

    # ---- units → text ------------------------------------------------------------------------

    def _blank_between(self, a: int | None, b: int) -> bool:
        return a is not None and a < b and self.text.count("\n", a, b) >= 2

    def _emit(self, tail: list[n.Comment]) -> str:
        out: list[list[str]] = []  # [code, trailing comment or ""]
        prev_end: int | None = None  # source end of the previous element
        after_open = False
        for u in self.units:
            comment_pad = INDENT * (u.depth + (u.kind == "close"))
            for j, c in enumerate(u.leading):
                forced = u.decl and j == 0 and bool(out)
                if forced or (not after_open and self._blank_between(prev_end, c.span.start)):
                    out.append(["", ""])
                out.append([comment_pad + c.text.rstrip(), ""])
                prev_end, after_open = c.span.end, False
            forced = u.decl and not u.leading and bool(out)
            if forced or (not after_open and u.kind != "close" and self._blank_between(prev_end, u.start)):
                out.append(["", ""])
            out += [[line, ""] for line in u.lines]
            if u.trailing is not None:
                out[-1][1] = u.trailing.text.rstrip()
            prev_end, after_open = u.end, u.kind == "open"
        for c in tail:
            if self._blank_between(prev_end, c.span.start):
                out.append(["", ""])
            out.append([c.text.rstrip(), ""])
            prev_end = c.span.end
        return "".join(line + "\n" for line in _align(out))


def _align(lines: list[list[str]]) -> list[str]:
    """Trailing comments on consecutive lines start in one column, two spaces after the longest code."""
    out: list[str] = []
    k = 0
    while k < len(lines):
        if not lines[k][1]:
            out.append(lines[k][0])
            k += 1
            continue
        run_end = k
        while run_end < len(lines) and lines[run_end][1]:
            run_end += 1
        col = max(len(code) for code, _ in lines[k:run_end]) + 2
        out += [code.ljust(col) + comment for code, comment in lines[k:run_end]]
        k = run_end
    return out


# ---- items ------------------------------------------------------------------------------------

class _Items:
    """The text of one item (setting, field, extract, transition, the workflow line)."""

    def __init__(self, text: str):
        self.text = text

    def line(self, node: n.Node) -> str:
        """The item on one line, unindented (inside a one-line block)."""
        return self._text(node, "", wrap=False)

    def lines(self, node: n.Node, pad: str) -> list[str]:
        """The item at indentation `pad`; a line longer than WIDTH breaks before `and`/`or`."""
        return self._text(node, pad, wrap=True).split("\n")

    def _text(self, node: n.Node, pad: str, wrap: bool) -> str:
        if isinstance(node, n.Setting):
            return self._expr(f"{pad}{node.key.value} = ", node.value, pad, wrap)
        if isinstance(node, n.Field):
            return f"{pad}{node.name.value}: {_type_text(node.type)}"
        if isinstance(node, n.Extract):
            return self._expr(f"{pad}extract {node.name.value} = ", node.value, pad, wrap)
        if isinstance(node, n.Transition):
            head = f"{pad}{self._state(node.source, pad)} -> {self._state(node.target, pad)}"
            return head if node.guard is None else self._expr(head + " when ", node.guard, pad, wrap)
        if isinstance(node, n.Workflow):
            desc = f" {string(node.description, pad, self.text)}" if node.description is not None else ""
            return f"{pad}workflow {node.name.value}{desc}"
        raise InternalError(f"cannot format a {type(node).__name__}")

    def _state(self, s: n.StateRef, pad: str) -> str:
        if s.kind == "agent":
            return s.name or ""
        if s.kind == "fail" and s.reason is not None:
            return f"fail {string(s.reason, pad, self.text)}"
        return s.kind

    def _expr(self, head: str, e: n.Expr, pad: str, wrap: bool) -> str:
        one = head + expr(e, pad, self.text)
        if not wrap or len(one) <= WIDTH or "\n" in one:
            return one
        chunks = self._chunks(e, pad)
        if head + " ".join(chunks) != one:
            return one
        lines = [head + chunks[0]]
        for c in chunks[1:]:
            if len(lines[-1]) + 1 + len(c) <= WIDTH:
                lines[-1] += " " + c
            else:
                lines.append(pad + CONTINUATION + c)
        return "\n".join(lines)

    def _chunks(self, e: n.Expr, pad: str) -> list[str]:
        """The expression's text cut before each `and` / `or`: where a long line may break."""
        if not isinstance(e, n.BoolOp):
            return [expr(e, pad, self.text)]
        out: list[str] = []
        for k, a in enumerate(e.args):
            sub = self._chunks(a, pad)
            if isinstance(a, n.BoolOp):
                sub = ["(" + sub[0], *sub[1:]]
                sub[-1] += ")"
            if k:
                sub[0] = f"{e.op} {sub[0]}"
            out += sub
        return out


def _type_text(t: n.TypeRef) -> str:
    arg = f"[{_type_text(t.arg)}]" if t.arg is not None else ""
    return f"{t.name.value}{arg}{'?' if t.optional else ''}"
