"""The flow as a graph (networkx): unknown states, dead transitions, reachability, exits, cycles."""

from __future__ import annotations

import networkx as nx

from . import nodes as n
from .diagnostics import Diagnostics, Label, did_you_mean
from .resolve import Symbols


def state_key(ref: n.StateRef) -> str:
    if ref.kind == "agent":
        return ref.name or "?"
    if ref.kind == "fail":
        return f"fail:{ref.reason.value if ref.reason else ''}"
    return ref.kind


def build(sym: Symbols) -> nx.MultiDiGraph:
    """start, agents, end and each distinct `fail "reason"` as nodes; one edge per transition."""
    g = nx.MultiDiGraph()
    g.add_node("start", kind="start")
    for a in sym.agents.values():
        g.add_node(a.name.value, kind="agent", tool="tool" in {s.key.value for s in a.settings})
    if sym.flow is None:
        return g
    for i, t in enumerate(sym.flow.transitions):
        src, dst = state_key(t.source), state_key(t.target)
        for ref, key in ((t.source, src), (t.target, dst)):
            if ref.kind == "agent" and key not in g and key in sym.broken:
                g.add_node(key, kind="agent", broken=True)  # declared but unparsable: keep its edges
        if src not in g or (dst not in g and t.target.kind == "agent"):
            continue
        if t.target.kind in ("end", "fail"):
            g.add_node(dst, kind=t.target.kind, reason=t.target.reason.value if t.target.reason else None)
        g.add_edge(src, dst, index=i, transition=t)
    return g


def check_flow(sym: Symbols, diags: Diagnostics) -> nx.MultiDiGraph:
    flow = sym.flow
    g = build(sym)
    if flow is None:
        return g
    agents = sym.agents
    names = list(agents) + ["start", "end", "fail"]
    by_source: dict[str, list[n.Transition]] = {}
    for t in flow.transitions:
        for ref, role in ((t.source, "from"), (t.target, "to")):
            if ref.kind == "agent" and ref.name not in agents:
                if ref.name in sym.broken:
                    continue
                other = sym.kind_of(ref.name or "")
                hint = (f"`{ref.name}` is a {other}; transitions connect agents" if other
                        else did_you_mean(ref.name or "", names) or f"agents are {', '.join(agents) or 'none'}")
                diags.error("E031", f"transition {role} unknown state `{ref.name}`", ref.span, hint)
        if t.source.kind in ("end", "fail"):
            diags.error("E036", f"no transition can leave `{t.source.kind}`: it ends the row", t.source.span,
                        "transitions go from `start` or an agent")
            continue
        if t.target.kind == "start":
            diags.error("E031", "no transition can go back to `start`", t.target.span,
                        "go to the first agent instead")
        if t.target.kind == "fail" and t.target.reason is None:
            diags.error("E037", "`fail` needs a reason", t.target.span, 'write `fail "reason"`, e.g. `fail "no_answer"`')
        by_source.setdefault(state_key(t.source), []).append(t)

    if any(d.code == "E031" for d in diags.items):
        return g  # with unknown states the graph is not the user's: reachability would only cascade
    if "start" not in by_source:
        diags.error("E030", "the flow has no `start` transition", flow.keyword,
                    f"add `start -> {next(iter(agents), 'FIRST_AGENT')}` to say which agent runs first")
    for src, ts in by_source.items():
        uncond = next((t for t in ts if t.guard is None), None)
        if uncond is not None:
            for t in ts[ts.index(uncond) + 1:]:
                diags.error("E032", f"this transition from `{src}` can never be taken", t.span,
                            "transitions are tried in order and the one before it always holds: "
                            "move it above, or give the earlier one a `when`",
                            [Label(uncond.span, "this transition has no `when`, so it is always taken")])
        elif src in agents or src == "start":
            diags.warning("W002", f"`{src}` has no unconditional fallback transition", ts[-1].span,
                          f"if no guard holds, the row fails with `no_transition`; end with e.g. "
                          f"`{src} -> fail \"{src}_no_match\"`")

    # Reachability, exits and closed cycles, over the edges that can actually be taken.
    live = nx.DiGraph()
    live.add_nodes_from(g.nodes(data=True))
    for u, v, d in g.edges(data=True):
        ts = by_source.get(u, [])
        t = d["transition"]
        uncond = next((x for x in ts if x.guard is None), None)
        if uncond is None or ts.index(t) <= ts.index(uncond):
            live.add_edge(u, v)
    reachable = nx.descendants(live, "start") if "start" in live else set()
    terminals = [x for x, k in live.nodes(data="kind") if k in ("end", "fail")]
    can_finish: set[str] = set(terminals)  # one backward search from every final state at once
    frontier = list(terminals)
    while frontier:
        for p in live.predecessors(frontier.pop()):
            if p not in can_finish:
                can_finish.add(p)
                frontier.append(p)
    for name, a in agents.items():
        if "start" in by_source and name not in reachable and name not in sym.broken:
            diags.error("E033", f"agent `{name}` is never reached from `start`", a.name.span,
                        f"add a transition to it, e.g. `start -> {name}` or `OTHER -> {name}`, or remove it")
    unreachable = {a for a in agents if "start" in by_source and a not in reachable}
    stuck = {a for a in agents if a not in can_finish and a not in unreachable}
    reported: set[str] = set()
    for comp in nx.strongly_connected_components(live.subgraph(stuck)):
        cyc = sorted(comp, key=lambda x: agents[x].span.start)
        if len(comp) > 1 or live.has_edge(cyc[0], cyc[0]):
            first = by_source.get(cyc[0], [None])[0]
            span = first.span if first else agents[cyc[0]].name.span
            loop = " -> ".join(cyc + [cyc[0]])
            diags.error("E035", f"the cycle {loop} has no way out", span,
                        f"add a guarded exit, e.g. `{cyc[-1]} -> end when ...` or "
                        f"`{cyc[-1]} -> fail \"too_long\" when turns >= 10`")
            reported |= comp
    for name in sorted(stuck - reported, key=lambda x: agents[x].span.start):
        a = agents[name]
        if name not in by_source:
            diags.error("E034", f"agent `{name}` has no transition out of it", a.name.span,
                        f"add e.g. `{name} -> end` to the flow")
        else:
            diags.error("E034", f"agent `{name}` has no path to `end` or `fail`", a.name.span,
                        "every row must be able to finish: add a transition towards `end` or `fail`")
    return g
