"""Name resolution: collect the declarations, report duplicates, missing ones and bad names."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import nodes as n
from .catalog import RESERVED
from .diagnostics import Diagnostics, Label
from .parser import KEYWORDS
from .source import Span


@dataclass
class Symbols:
    workflow: n.Workflow | None = None
    input: n.Input | None = None
    limits: n.Limits | None = None
    flow: n.Flow | None = None
    output: n.Output | None = None
    models: dict[str, n.Model] = field(default_factory=dict)
    tools: dict[str, n.Tool] = field(default_factory=dict)
    agents: dict[str, n.Agent] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)  # declared, but failed to parse: don't cascade

    def kind_of(self, name: str) -> str | None:
        for kind, table in (("model", self.models), ("tool", self.tools), ("agent", self.agents)):
            if name in table:
                return kind
        return None


SINGLE = {n.Workflow: "workflow", n.Input: "input", n.Limits: "limits", n.Flow: "flow", n.Output: "output"}


def resolve(program: n.Program, diags: Diagnostics) -> Symbols:
    sym = Symbols(broken=set(program.broken))
    first_of_name: dict[str, n.Name] = {}
    for d in program.decls:
        if type(d) in SINGLE:
            attr = SINGLE[type(d)]
            prev = getattr(sym, attr)
            if prev is not None:
                diags.error("E011", f"`{attr}` is declared more than once", d.keyword,
                            f"merge the two `{attr}` declarations into one",
                            [Label(prev.keyword, "first declared here")])
            else:
                setattr(sym, attr, d)
            if isinstance(d, n.Workflow):
                check_name(d.name, "workflow", diags)
            continue
        table = {n.Model: sym.models, n.Tool: sym.tools, n.Agent: sym.agents}[type(d)]
        kind = type(d).__name__.lower()
        if not check_name(d.name, kind, diags):
            sym.broken.add(d.name.value)  # its uses would only repeat the error
            continue
        name = d.name.value
        if name in first_of_name:
            prev = first_of_name[name]
            diags.error("E013", f"the name `{name}` is declared twice", d.name.span,
                        "models, tools and agents share one namespace: rename one of them",
                        [Label(prev.span, "first declared here")])
            sym.broken.add(name)
            continue
        first_of_name[name] = d.name
        table[name] = d
    if sym.workflow is None and "workflow" not in sym.broken:
        diags.error("E010", "no `workflow` declaration", Span(0, 0),
                    'start the file with `workflow NAME "what it does"`')
    if sym.flow is None and "flow" not in sym.broken:
        diags.error("E012", "no `flow` declaration", Span(0, 0),
                    "add `flow { start -> FIRST_AGENT ... }` with the transitions between agents")
    if sym.input is None and "input" not in sym.broken:
        diags.error("E029", "no `input` declaration", Span(0, 0),
                    "declare the fields of an input row, e.g. `input { id: str  question: str }`")
    for d in program.of(n.Input):
        seen: dict[str, n.Name] = {}
        for f in d.fields:
            if not check_name(f.name, "input field", diags):
                continue
            if f.name.value in seen:
                diags.error("E014", f"input field `{f.name.value}` is declared twice", f.name.span,
                            labels=[Label(seen[f.name.value].span, "first declared here")])
            seen.setdefault(f.name.value, f.name)
    return sym


def check_name(name: n.Name, kind: str, diags: Diagnostics) -> bool:
    if name.is_keyword or name.value in KEYWORDS:
        article = "an" if kind[0] in "aeiou" else "a"
        diags.error("E005", f"`{name.value}` is a keyword and cannot name {article} {kind}", name.span,
                    f"choose another name, e.g. `{name.value}_{kind.split()[0]}`")
        return False
    if kind == "agent" and name.value in RESERVED:
        diags.error("E005", f"`{name.value}` is reserved for templates and guards and cannot name an agent",
                    name.span, f"choose another name, e.g. `{name.value}_agent`")
        return False
    return True
