"""Pictures of a checked workflow's flow: Graphviz DOT, Mermaid, and SVG/PNG through Graphviz's `dot`.

Nodes: `start`, every agent (LLM agents and tool agents drawn differently), `end`, and each distinct
`fail "reason"`. Edges: one per live transition (transitions after an unconditional one are dead and
left out); guarded ones dashed and labelled with their guard, unconditional ones solid. When a state
has several transitions, labels carry the order they are tried in ("1: guard", ..., "3: else").
Output is deterministic: nodes in declaration order, edges in transition order.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass

from . import nodes as n
from .checker import Analysis
from .printer import expr

LABEL_WIDTH = 40
FORMATS = ("dot", "mermaid", "svg", "png")
RENDERED = ("svg", "png")

# kind → (DOT attributes, Mermaid shape (open, close), Mermaid class style)
_STYLE = {
    "start": ('shape=circle, style=filled, fillcolor="#37474f", color="#37474f", fontcolor=white',
              ('(("', '"))'), "fill:#37474f,stroke:#37474f,color:#ffffff"),
    "llm": ('shape=box, style="rounded,filled", fillcolor="#e3f2fd", color="#1565c0"',
            ('("', '")'), "fill:#e3f2fd,stroke:#1565c0,color:#0d47a1"),
    "tool": ('shape=component, style=filled, fillcolor="#fff3e0", color="#e65100"',
             ('[["', '"]]'), "fill:#fff3e0,stroke:#e65100,color:#bf360c"),
    "end": ('shape=doublecircle, style=filled, fillcolor="#c8e6c9", color="#2e7d32"',
            ('((("', '")))'), "fill:#c8e6c9,stroke:#2e7d32,color:#1b5e20"),
    "fail": ('shape=octagon, style=filled, fillcolor="#ffcdd2", color="#c62828"',
             ('{{"', '"}}'), "fill:#ffcdd2,stroke:#c62828,color:#b71c1c"),
}


# Mermaid class names avoid the keyword `end`.
_MERMAID_CLASS = {"start": "mxstart", "llm": "mxllm", "tool": "mxtool", "end": "mxdone", "fail": "mxfail"}


class GraphvizMissing(RuntimeError):
    """Graphviz's `dot` is not on PATH."""

    def __init__(self, fmt: str):
        super().__init__(
            f"--format {fmt} needs Graphviz's `dot` program, which is not installed: install it "
            "(Debian/Ubuntu: `apt-get install graphviz`; macOS: `brew install graphviz`), "
            "or use --format dot|mermaid")


class GraphvizFailed(RuntimeError):
    """`dot` ran and failed."""


@dataclass(frozen=True, slots=True)
class Node:
    id: str  # the flow graph's state key: "start", an agent name, "end", "fail:REASON"
    kind: str  # "start" | "llm" | "tool" | "end" | "fail"
    lines: tuple[str, ...]  # label lines


@dataclass(frozen=True, slots=True)
class Edge:
    src: str
    dst: str
    conditional: bool
    label: str


def shorten(text: str, width: int = LABEL_WIDTH) -> str:
    """`text` cut to at most `width` characters with an ellipsis, at a space when one is near the end."""
    if width <= 0 or len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    if space >= width * 0.6:
        cut = cut[:space]
    return cut.rstrip() + "…"


def picture(an: Analysis, label_width: int = LABEL_WIDTH) -> tuple[list[Node], list[Edge]]:
    """The nodes and live edges of a checked program's flow."""
    g = an.graph
    if g is None:
        return [], []
    live: list[tuple[str, str, n.Transition]] = []
    closed: set[str] = set()  # states whose unconditional transition has been seen
    for u, v, data in sorted(g.edges(data=True), key=lambda e: e[2]["index"]):
        if u not in closed:
            live.append((u, v, data["transition"]))
            if data["transition"].guard is None:
                closed.add(u)
    count = Counter(u for u, _, _ in live)
    seen: Counter[str] = Counter()
    edges: list[Edge] = []
    for u, v, t in live:
        seen[u] += 1
        text = shorten(expr(t.guard), label_width) if t.guard is not None else ""
        if count[u] > 1:
            text = f"{seen[u]}: {text or 'else'}"
        edges.append(Edge(u, v, t.guard is not None, text))
    targets = {e.dst for e in edges}
    nodes: list[Node] = []
    for key, data in g.nodes(data=True):
        kind = data.get("kind")
        if kind == "start":
            nodes.append(Node(key, "start", ("start",)))
        elif kind == "agent":
            agent = an.agents.get(key, {})
            if data.get("tool"):
                nodes.append(Node(key, "tool", (key, f"tool: {agent.get('tool', '?')}")))
            else:
                nodes.append(Node(key, "llm", (key, f"model: {agent.get('model', '?')}")))
        elif kind in ("end", "fail") and key in targets:
            nodes.append(Node(key, kind, ("end",) if kind == "end" else ("fail", data.get("reason") or "")))
    return nodes, edges


# ---- DOT ------------------------------------------------------------------------------------

def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(an: Analysis, label_width: int = LABEL_WIDTH) -> str:
    """Graphviz DOT text."""
    nodes, edges = picture(an, label_width)
    name = an.symbols.workflow.name.value if an.symbols.workflow else "workflow"
    out = [f"// {name}: generated by mxc graph", f"digraph {_dot_str(name)} {{",
           f'  graph [rankdir=TB, label={_dot_str(name)}, labelloc=t, fontname="Helvetica,Arial,sans-serif"];',
           '  node [fontname="Helvetica,Arial,sans-serif", fontsize=11];',
           '  edge [fontname="Helvetica,Arial,sans-serif", fontsize=9];', ""]
    for nd in nodes:
        label = "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in nd.lines)
        out.append(f'  {_dot_str(nd.id)} [{_STYLE[nd.kind][0]}, label="{label}"];')
    out.append("")
    for e in edges:
        attrs = (["style=dashed"] if e.conditional else []) + ([f"label={_dot_str(e.label)}"] if e.label else [])
        tail = f" [{', '.join(attrs)}]" if attrs else ""
        out.append(f"  {_dot_str(e.src)} -> {_dot_str(e.dst)}{tail};")
    out.append("}")
    return "\n".join(out) + "\n"


# ---- Mermaid --------------------------------------------------------------------------------

def _mermaid_text(text: str) -> str:
    """Text for inside a quoted Mermaid label: entity codes for the characters Mermaid reads."""
    for ch, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("|", "#124;"),
                     ("`", "#96;")):
        text = text.replace(ch, code)
    return text


def to_mermaid(an: Analysis, label_width: int = LABEL_WIDTH) -> str:
    """Mermaid flowchart text (renders on GitHub, in GitLab and in the Mermaid live editor)."""
    nodes, edges = picture(an, label_width)
    name = an.symbols.workflow.name.value if an.symbols.workflow else "workflow"
    # Numbered ids: Mermaid reads `end` (even in `x_end`) as a keyword, and agents may have any name.
    ids = {nd.id: f"n{k}" for k, nd in enumerate(nodes)}
    out = [f"%% {_mermaid_text(name)}: generated by mxc graph", "flowchart TD"]
    for nd in nodes:
        open_, close = _STYLE[nd.kind][1]
        out.append(f"  {ids[nd.id]}{open_}{'<br/>'.join(_mermaid_text(x) for x in nd.lines)}{close}")
    for e in edges:
        arrow = "-.->" if e.conditional else "-->"
        label = f'|"{_mermaid_text(e.label)}"|' if e.label else ""
        out.append(f"  {ids[e.src]} {arrow}{label} {ids[e.dst]}")
    for kind, (_, _, style) in _STYLE.items():
        members = [ids[nd.id] for nd in nodes if nd.kind == kind]
        if members:
            cls = _MERMAID_CLASS[kind]
            out.append(f"  classDef {cls} {style}")
            out.append(f"  class {','.join(members)} {cls}")
    return "\n".join(out) + "\n"


# ---- SVG / PNG ------------------------------------------------------------------------------

def render(dot_text: str, fmt: str, timeout: float = 60.0) -> bytes:
    """SVG or PNG bytes drawn by Graphviz's `dot` (raises GraphvizMissing when it is not installed)."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing(fmt)
    args = [exe, f"-T{fmt}"] + (["-Gdpi=144"] if fmt == "png" else [])
    proc = subprocess.run(args, input=dot_text.encode("utf-8"), capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise GraphvizFailed(f"dot exited with status {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def draw(an: Analysis, fmt: str, label_width: int = LABEL_WIDTH) -> bytes:
    """The picture in one of FORMATS, as bytes."""
    if fmt == "mermaid":
        return to_mermaid(an, label_width).encode("utf-8")
    dot_text = to_dot(an, label_width)
    if fmt == "dot":
        return dot_text.encode("utf-8")
    if fmt in RENDERED:
        return render(dot_text, fmt)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
