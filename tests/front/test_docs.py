"""docs/language.md cannot rot: its programs are checked by the real `mxc check`.

Fenced blocks in the reference:
    ```mx-ok            a complete program: `mxc check` reports nothing at all
    ```mx-error E015    a program: `mxc check` reports exactly the code E015 (and nothing else);
                        a ```text block right after it shows the output, whose first line must
                        carry the same line, column, severity and code
    ```mx               a fragment, not checked
Every code of `matrixlang.diagnostics.CODES` has a section `### CODE — TITLE` with its exact title,
and an error example unless the section says it is reserved; every `(#anchor)` link resolves.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from matrixlang.diagnostics import CODES

DOC = Path(__file__).resolve().parents[2] / "docs" / "language.md"
HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$")
CODE_HEADING = re.compile(r"^### ([EW]\d{3}) — (.+)$")
SHOWN = re.compile(r"^example\.mx:(\d+):(\d+): (error|warning)\[([EW]\d{3})\]: ")


@dataclass
class Block:
    info: str  # the fence's info string, e.g. "mx-error E015"
    text: str
    line: int  # 1-based line of the opening fence
    section: str | None  # the code of the enclosing `### CODE — title` section, if any


def blocks(doc: str) -> list[Block]:
    """Every fenced block, in order, with the diagnostic-code section it sits in."""
    out: list[Block] = []
    section: str | None = None
    lines = doc.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := CODE_HEADING.match(line):
            section = m.group(1)
        elif line.startswith("#") and HEADING.match(line):
            section = None
        if line.startswith("```"):
            info, start = line[3:].strip(), i
            i += 1
            body: list[str] = []
            while i < len(lines) and lines[i] != "```":
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"docs/language.md:{start + 1}: unclosed code fence"
            out.append(Block(info, "\n".join(body) + "\n", start + 1, section))
        i += 1
    return out


def prose(doc: str) -> str:
    """The document without its fenced blocks (same fence rules as `blocks`)."""
    out: list[str] = []
    inside = False
    for line in doc.split("\n"):
        if inside:
            inside = line != "```"
        elif line.startswith("```"):
            inside = True
        else:
            out.append(line)
    return "\n".join(out)


def mxc() -> list[str]:
    exe = shutil.which("mxc") or str(Path(sys.executable).parent / "mxc")
    assert Path(exe).exists(), "mxc is not installed: pip install -e ."
    return [exe]


def slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    s = title.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def checked(doc: str, tmp_path_factory) -> dict[int, tuple[Block, list[dict], Block | None]]:
    """Run `mxc check --format json` once over every mx-ok / mx-error block; by block line."""
    bs = blocks(doc)
    d = tmp_path_factory.mktemp("docs")
    todo: list[tuple[Path, Block, Block | None]] = []
    for k, b in enumerate(bs):
        if b.info == "mx-ok" or b.info.startswith("mx-error"):
            p = d / f"block{b.line}.mx"
            p.write_text(b.text, encoding="utf-8")
            nxt = bs[k + 1] if k + 1 < len(bs) and bs[k + 1].info == "text" else None
            todo.append((p, b, nxt))
    r = subprocess.run([*mxc(), "check", "--format", "json", *(str(p) for p, _, _ in todo)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    report = {Path(x["file"]).name: x["diagnostics"] for x in json.loads(r.stdout)}
    return {b.line: (b, report[p.name], shown) for p, b, shown in todo}


def test_doc_has_examples(checked):
    kinds = [b.info.split()[0] for b, _, _ in checked.values()]
    assert kinds.count("mx-ok") >= 1
    assert kinds.count("mx-error") >= len(CODES)


def test_complete_programs_check_clean(checked):
    for b, diags, _ in checked.values():
        if b.info == "mx-ok":
            assert diags == [], f"docs/language.md:{b.line}: {[(d['code'], d['message']) for d in diags]}"


def test_error_examples_report_exactly_their_code(checked):
    for b, diags, shown in checked.values():
        if not b.info.startswith("mx-error"):
            continue
        parts = b.info.split()
        assert len(parts) == 2 and parts[1] in CODES, f"docs/language.md:{b.line}: bad info string {b.info!r}"
        code = parts[1]
        got = sorted({d["code"] for d in diags})
        assert got == [code], f"docs/language.md:{b.line}: expected {code}, mxc check reported {got}"
        assert b.section == code, f"docs/language.md:{b.line}: a {code} example in the section of {b.section}"
        if shown is not None:
            m = SHOWN.match(shown.text)
            assert m, f"docs/language.md:{shown.line}: shown output does not start with example.mx:L:C: ..."
            first = diags[0]
            assert (int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)) == (
                first["line"], first["column"], first["severity"], first["code"]
            ), f"docs/language.md:{shown.line}: shown location differs from mxc check's"


def test_every_code_has_a_section_with_its_title(doc):
    sections = {m.group(1): m.group(2) for line in doc.split("\n") if (m := CODE_HEADING.match(line))}
    assert set(sections) == set(CODES), (
        f"missing: {sorted(set(CODES) - set(sections))}, unknown: {sorted(set(sections) - set(CODES))}")
    for code, title in sections.items():
        assert title == CODES[code], f"{code}: the doc says {title!r}, diagnostics.CODES says {CODES[code]!r}"


def test_every_code_has_an_example_unless_reserved(doc):
    examples = {b.info.split()[1] for b in blocks(doc) if b.info.startswith("mx-error ")}
    chunks = re.split(r"^### ", doc, flags=re.M)
    for code in CODES:
        chunk = next(c for c in chunks if c.startswith(code + " "))
        if code not in examples:
            assert "*Reserved.*" in chunk, f"{code} has no ```mx-error {code} example"


def test_internal_links_resolve(doc):
    anchors = {slug(m.group(2)) for line in doc.split("\n") if (m := HEADING.match(line))}
    links = set(re.findall(r"\]\(#([^)]+)\)", prose(doc)))
    assert links, "no internal links found"
    assert links <= anchors, f"unresolved anchors: {sorted(links - anchors)}"


def test_block_parser_sees_fences_and_sections():
    """The parser the other tests rely on: info strings, bodies and sections."""
    sample = "### E015 — x\n```mx-error E015\na\nb\n```\n```text\nout\n```\n## Other\n```mx\nc\n```\n"
    bs = blocks(sample)
    assert [(b.info, b.text, b.section) for b in bs] == [
        ("mx-error E015", "a\nb\n", "E015"), ("text", "out\n", "E015"), ("mx", "c\n", None)]
    assert slug("E032 — transition after an unconditional one (dead code)") == \
        "e032--transition-after-an-unconditional-one-dead-code"
    assert slug("Expressions (guards and output)") == "expressions-guards-and-output"
    assert prose("a\n```mx\n# x](#hidden)\n```\nb") == "a\nb"
