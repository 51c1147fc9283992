"""String literals: escapes, raw strings, and dedented `\"\"\"` blocks, with a source offset per character.

The offset map lets a template error inside a string point at the exact source column.
"""

from __future__ import annotations

from dataclasses import dataclass

ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


@dataclass(slots=True)
class BadEscape:
    offset: int  # source offset of the backslash
    text: str  # the escape as written, e.g. "\\s"


def decode(raw: str, start: int) -> tuple[str, str, list[int], list[BadEscape]]:
    """Decode a string token that begins at source offset `start`.

    Returns (value, style, offsets, bad_escapes); offsets[i] is the source offset of value[i].
    """
    is_raw = raw.startswith("r")
    body_start = start + (1 if is_raw else 0)
    token = raw[1:] if is_raw else raw
    if token.startswith('"""'):
        style = "rawlong" if is_raw else "long"
        chars = _dedent(token[3:-3], body_start + 3)
    else:
        style = "raw" if is_raw else "plain"
        chars = [(c, body_start + 1 + i) for i, c in enumerate(token[1:-1])]
    if is_raw:
        return "".join(c for c, _ in chars), style, [o for _, o in chars], []
    return _unescape(chars, style)


def _unescape(chars: list[tuple[str, int]], style: str) -> tuple[str, str, list[int], list[BadEscape]]:
    out: list[str] = []
    offs: list[int] = []
    bad: list[BadEscape] = []
    i = 0
    while i < len(chars):
        c, o = chars[i]
        if c == "\\" and i + 1 < len(chars):
            nxt = chars[i + 1][0]
            if nxt in ESCAPES:
                out.append(ESCAPES[nxt])
                offs.append(o)
            else:
                bad.append(BadEscape(o, "\\" + nxt))
                out.append("\\" + nxt)
                offs += [o, chars[i + 1][1]]
            i += 2
            continue
        out.append(c)
        offs.append(o)
        i += 1
    return "".join(out), style, offs, bad


def _dedent(content: str, start: int) -> list[tuple[str, int]]:
    """Drop a first line that is blank, a last line that is blank, then the common indentation."""
    lines: list[tuple[str, int]] = []
    pos = 0
    for line in content.split("\n"):
        lines.append((line, start + pos))
        pos += len(line) + 1
    if len(lines) > 1 and not lines[0][0].strip():
        lines = lines[1:]
    if len(lines) > 1 and not lines[-1][0].strip():
        lines = lines[:-1]
    indents = [len(ln) - len(ln.lstrip(" \t")) for ln, _ in lines if ln.strip()]
    margin = min(indents) if indents else 0
    chars: list[tuple[str, int]] = []
    for k, (line, off) in enumerate(lines):
        if k:
            chars.append(("\n", off - 1))
        cut = margin if line.strip() else len(line)
        chars += [(c, off + cut + i) for i, c in enumerate(line[cut:])]
    return chars
