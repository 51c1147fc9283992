"""`mxc graph`: DOT and Mermaid text (golden files), and SVG/PNG drawn by the real Graphviz `dot`.

Golden files live in fixtures/graph/ next to their programs; after an intended change, regenerate
them with `MX_UPDATE_GOLDEN=1 pytest tests/front/test_graph.py` and review the diff.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from matrixlang.checker import check
from matrixlang.cli import main

# Imported before capsys swaps sys.stderr: commands/common.py binds it as a default argument.
from matrixlang.commands import graph as _graph_command  # noqa: F401
from matrixlang.draw import picture, shorten, to_dot, to_mermaid
from matrixlang.source import Source

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "graph"
PROGRAMS = sorted(FIXTURES.glob("*.mx"))
WORKFLOWS = sorted((ROOT / "workflows").glob("*.mx"))
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz `dot` is not installed (apt-get install graphviz)")
SVG = "{http://www.w3.org/2000/svg}"


def analysis(path: Path):
    an = check(Source.from_path(path))
    assert an.ok, [d.message for d in an.diags.items if d.is_error]
    return an


# ---- golden text ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: p.stem)
@pytest.mark.parametrize("fmt", ["dot", "mmd"])
def test_golden(path: Path, fmt: str) -> None:
    an = analysis(path)
    text = to_dot(an) if fmt == "dot" else to_mermaid(an)
    golden = path.with_suffix(f".{fmt}")
    if os.environ.get("MX_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
    assert text == (to_dot(analysis(path)) if fmt == "dot" else to_mermaid(analysis(path))), "not deterministic"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_workflow_draws(path: Path) -> None:
    """Every node and live transition of every workflow is in both pictures."""
    an = analysis(path)
    nodes, edges = picture(an)
    flow = an.symbols.flow.transitions
    assert len(edges) == len(flow)  # checked programs have no dead transitions
    assert [e.conditional for e in edges] == [t.guard is not None for t in flow]
    dot, mmd = to_dot(an), to_mermaid(an)
    assert dot.count(" -> ") == len(flow) and dot.count("style=dashed") == sum(e.conditional for e in edges)
    assert mmd.count(" -.->") == sum(e.conditional for e in edges)
    assert mmd.count(" -->") == len(edges) - sum(e.conditional for e in edges)
    for name in an.agents:
        assert f'"{name}" [' in dot
    reasons = {t.target.reason.value for t in flow if t.target.kind == "fail"}
    assert {nd.lines[1] for nd in nodes if nd.kind == "fail"} == reasons


def test_picture_of_coder() -> None:
    nodes, edges = picture(analysis(FIXTURES / "coder.mx"))
    assert [(nd.id, nd.kind) for nd in nodes] == [
        ("start", "start"), ("coder", "llm"), ("runner", "tool"), ("fail:no_code", "fail"), ("end", "end"),
        ("fail:tests_fail", "fail")]
    assert [(e.src, e.dst, e.conditional, e.label) for e in edges] == [
        ("start", "coder", False, ""),
        ("coder", "runner", True, "1: coder.code != null"),
        ("coder", "fail:no_code", True, "2: visits.coder >= 3"),
        ("coder", "coder", False, "3: else"),
        ("runner", "end", True, "1: runner.passed != null"),
        ("runner", "fail:tests_fail", True, "2: visits.runner >= 4"),
        ("runner", "coder", False, "3: else"),
    ]


def test_dead_transitions_and_their_targets_are_not_drawn() -> None:
    src = ('workflow d\ninput { id: str }\nmodel m { backend = "sim" }\nagent a { model = m }\n'
           'flow { start -> a  a -> end  a -> fail "never" when turns > 1 }\noutput { id = row.id }\n')
    an = check(Source("d.mx", src))
    assert [d.code for d in an.diags.items if d.is_error] == ["E032"]
    nodes, edges = picture(an)
    assert [nd.id for nd in nodes] == ["start", "a", "end"]
    assert [(e.src, e.dst, e.label) for e in edges] == [("start", "a", ""), ("a", "end", "")]


def test_shorten() -> None:
    assert shorten("turns >= 20") == "turns >= 20"
    assert shorten("x" * 40) == "x" * 40
    assert shorten("x" * 41) == "x" * 39 + "…"
    long = "student.answer != null and student.answer == teacher.answer"
    assert shorten(long) == "student.answer != null and…"
    assert len(shorten(long, 20)) <= 20
    assert shorten(long, 0) == long
    _, edges = picture(analysis(FIXTURES / "coral.mx"), label_width=0)
    assert edges[2].label == "1: " + long


# ---- escaping, checked by the real renderers --------------------------------------------------

def test_mermaid_labels_are_escaped() -> None:
    mmd = to_mermaid(analysis(FIXTURES / "quoting.mx"))
    for line in mmd.splitlines()[2:]:
        for label in re.findall(r'"([^"]*)"', line):
            assert not set(label.replace("<br/>", "\n")) & set('"<>|`'), label
    assert "bad #quot;quote#quot; #124; #lt;reason#gt;" in mmd
    # `end` is a Mermaid keyword: it may appear only inside quoted labels, never as an id or class.
    unquoted = re.sub(r'"[^"]*"', '""', mmd)
    assert not re.search(r"\bend\b", unquoted)


def _svg_texts(svg: bytes) -> tuple[dict[str, list[str]], dict[str, tuple[list[str], bool]]]:
    """Node title → its text lines, and edge title → (label lines, dashed) from Graphviz's SVG."""
    root = ET.fromstring(svg)
    nodes: dict[str, list[str]] = {}
    edges: dict[str, tuple[list[str], bool]] = {}
    for g in root.iter(f"{SVG}g"):
        title = g.findtext(f"{SVG}title")
        texts = [t.text or "" for t in g.iter(f"{SVG}text")]
        if g.get("class") == "node":
            nodes[title] = texts
        elif g.get("class") == "edge":
            dashed = any(p.get("stroke-dasharray") for p in g.iter(f"{SVG}path"))
            edges.setdefault(title, ([], False))
            edges[title] = (edges[title][0] + texts, edges[title][1] or dashed)
    return nodes, edges


@needs_dot
def test_svg_rendered_by_graphviz_shows_the_exact_labels(tmp_path: Path) -> None:
    out = tmp_path / "q.svg"
    assert main(["graph", str(FIXTURES / "quoting.mx"), "-o", str(out)]) == 0  # format from the suffix
    nodes, edges = _svg_texts(out.read_bytes())
    assert nodes['fail:bad "quote" | <reason>'] == ["fail", 'bad "quote" | <reason>']
    assert nodes["end_check"] == ["end_check", "tool: py"]
    assert nodes["writer"] == ["writer", "model: m"]
    assert edges["writer->end_check"] == (['1: writer.text contains "\\"hi\\"" and…'], True)
    assert edges["writer->end"] == (["3: else"], False)
    assert edges["start->writer"] == ([], False)
    svg = out.read_text()
    assert 'fill="#e3f2fd"' in svg and 'fill="#fff3e0"' in svg  # LLM and tool agents look different


@needs_dot
def test_png_and_svg_from_the_command_line(tmp_path: Path) -> None:
    png = tmp_path / "coral.png"
    r = subprocess.run([sys.executable, "-m", "matrixlang", "graph", str(FIXTURES / "coral.mx"), "--format", "png",
                        "-o", str(png)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 200 and height > 300


def test_without_graphviz_svg_fails_with_the_fix(tmp_path: Path) -> None:
    """PATH without `dot`: exit 1 and say how to get it, or which formats work without it."""
    env = {**os.environ, "PATH": str(tmp_path)}
    for fmt in ("svg", "png"):
        r = subprocess.run([sys.executable, "-m", "matrixlang", "graph", str(FIXTURES / "coral.mx"), "--format", fmt,
                            "-o", str(tmp_path / f"x.{fmt}")], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 1
        assert "apt-get install graphviz" in r.stderr and "--format dot|mermaid" in r.stderr
        assert "Traceback" not in r.stderr
        assert not (tmp_path / f"x.{fmt}").exists()
    r = subprocess.run([sys.executable, "-m", "matrixlang", "graph", str(FIXTURES / "coral.mx"), "-f", "mermaid"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout == (FIXTURES / "coral.mmd").read_text()


# ---- the command ------------------------------------------------------------------------------

def test_cli_outputs_and_errors(tmp_path: Path, capsys) -> None:
    assert main(["graph", str(FIXTURES / "coder.mx")]) == 0
    assert capsys.readouterr().out == (FIXTURES / "coder.dot").read_text()
    out = tmp_path / "coder.mmd"
    assert main(["graph", str(FIXTURES / "coder.mx"), "-o", str(out)]) == 0
    assert out.read_text() == (FIXTURES / "coder.mmd").read_text()
    assert main(["graph", str(FIXTURES / "coder.mx"), "-f", "dot", "-o", str(tmp_path / "x.mmd")]) == 0
    assert (tmp_path / "x.mmd").read_text() == (FIXTURES / "coder.dot").read_text()  # --format wins
    capsys.readouterr()

    broken = tmp_path / "broken.mx"
    broken.write_text('workflow b\ninput { id: str }\nmodel m { backend = "sim" }\nagent a { model = m }\n'
                      "flow { start -> a  a -> ned }\noutput { id = row.id }\n")
    assert main(["graph", str(broken)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and f"{broken}:5:25: error[E031]" in captured.err
    with pytest.raises(SystemExit) as exc:
        main(["graph", str(broken), "--format", "pdf"])
    assert exc.value.code == 2
