"""jinja2 templates in agents: parse them in the sandbox and find what they read.

Templates are parsed with the runtime's own environment (`matrixlang.runtime.semantics.templates.ENV`), and the
names, filters and tests they may use are the runtime's tables (`matrixlang.runtime.names`,
`templates.FILTERS`, `templates.TESTS`): what the checker accepts is what the runtime renders.
Diagnostics point into the `.mx` file through the string literal's offset map.
"""

from __future__ import annotations

import re

from jinja2 import Environment, TemplateSyntaxError
from jinja2 import nodes as jn

from matrixlang.runtime.names import (
    CONTEXT_NAMES,
    ENTRY_FIELDS,
    TEMPLATE_GLOBALS,
    TEMPLATE_LOCALS,
    TEMPLATE_REMOVED,
)
from matrixlang.runtime.semantics import templates as rt

from . import nodes as n
from .diagnostics import Diagnostics, did_you_mean
from .source import Span
from .types import Scope

JINJA_GLOBALS = (*TEMPLATE_GLOBALS, *TEMPLATE_LOCALS)


def environment() -> Environment:
    """The environment templates are parsed with: the one the runtime renders them with."""
    return rt.ENV


def _locate(lit: n.Literal, lineno: int | None, needle: str | None, last: bool = False) -> Span:
    """The source span of `needle` (its first, or `last`, occurrence) on the template's line `lineno`
    (or of the whole line)."""
    text: str = lit.value
    offs = lit.offsets or []
    if not offs:
        return lit.span
    lines = text.split("\n")
    lineno = max(1, min(lineno or 1, len(lines)))
    line_start = sum(len(x) + 1 for x in lines[: lineno - 1])
    line = lines[lineno - 1]
    i = -1
    if needle and last:
        i = line.rfind(needle)
    elif needle:
        m = re.search(r"(?<![\w.])" + re.escape(needle) + r"(?!\w)", line)
        i = m.start() if m else line.find(needle)
    if i < 0:
        stripped = len(line) - len(line.lstrip())
        a, b = line_start + stripped, line_start + max(len(line), stripped + 1)
    else:
        a, b = line_start + i, line_start + i + len(needle)
    a, b = min(a, len(offs) - 1), min(b, len(offs)) - 1
    return Span(offs[a], offs[max(a, b)] + 1)


_GENERIC = "templates are jinja2: `{{ expr }}`, `{% if %}...{% endif %}`, `{% for x in xs %}...{% endfor %}`"
_TAGS = ("if", "elif", "else", "endif", "for", "endfor", "set", "endset", "filter", "endfilter", "macro",
         "endmacro", "call", "endcall", "with", "endwith", "raw", "endraw", "block", "endblock")


def _syntax_hint(message: str) -> tuple[str | None, str]:
    """What to point at (the last occurrence on the error's line) and how to fix a jinja2 syntax error."""
    if "unexpected end of template" in message and "end of print statement" in message:
        return "{{", "close the expression with `}}`"
    if "unexpected end of template" in message and "end of statement block" in message:
        return "{%", "close the tag with `%}`"
    m = re.search(r"innermost block that needs to be closed is '(\w+)'", message)
    if m:
        return "{%", f"close the block with `{{% end{m.group(1)} %}}`"
    m = re.search(r"unknown tag '(\w+)'", message)
    if m:
        return m.group(1), did_you_mean(m.group(1), _TAGS) or _GENERIC
    if message.startswith("unexpected '}'"):
        return "}", "close the expression with `}}` (two braces)"
    return None, _GENERIC


def check_template(lit: n.Literal, scope: Scope, diags: Diagnostics, where: str) -> None:
    """Parse one template and check every name and field it reads."""
    env = environment()
    try:
        ast = env.parse(lit.value)
    except TemplateSyntaxError as exc:
        needle, hint = _syntax_hint(exc.message or "")
        diags.error("E027", f"template syntax error in `{where}`: {exc.message}",
                    _locate(lit, exc.lineno, needle, last=True), hint)
        return
    loads, stored, attrs, calls = _walk(ast)
    unknown = False
    for node in calls:
        table, what = (rt.FILTERS, "filter") if isinstance(node, jn.Filter) else (rt.TESTS, "test")
        if node.name not in table:
            unknown = True
            diags.error("E027", f"template `{where}` uses unknown {what} `{node.name}`",
                        _locate(lit, node.lineno, node.name), did_you_mean(node.name, table)
                        or f"see the jinja2 list of builtin {what}s")
    if unknown:
        return
    known = set(CONTEXT_NAMES) | set(scope.agents) | set(JINJA_GLOBALS) | set(scope.broken)
    # Names the template reads without setting them itself (`for`, `set`, `with`, macro parameters).
    # Simpler than jinja2.meta.find_undeclared_variables (which runs its code generator, the slowest
    # part of checking a template) and never stricter: a name set anywhere counts as declared.
    undeclared = {node.name for node in loads} - stored
    for node in loads:
        if node.name in undeclared and node.name in TEMPLATE_REMOVED:
            diags.error("E040", f"template `{where}` reads unknown name `{node.name}`",
                        _locate(lit, node.lineno, node.name), TEMPLATE_REMOVED[node.name])
            undeclared.discard(node.name)
        elif node.name in undeclared and node.name not in known:
            diags.error("E040", f"template `{where}` reads unknown name `{node.name}`",
                        _locate(lit, node.lineno, node.name),
                        did_you_mean(node.name, known - set(JINJA_GLOBALS))
                        or f"templates can read {', '.join(sorted(known - set(JINJA_GLOBALS)))}")
            undeclared.discard(node.name)  # once per name
    seen_attr: set[int] = set()
    for node in attrs:
        base = node.node
        if base.name not in undeclared:
            continue
        if isinstance(node, jn.Getattr):
            field = node.attr
        elif isinstance(node.arg, jn.Const) and isinstance(node.arg.value, str):
            field = node.arg.value
        else:
            continue
        seen_attr.add(id(base))
        _check_field(lit, node.lineno, base.name, field, scope, diags, where)
    # A bare agent name (`{{ teacher }}`) reads all of its fields.
    for node in loads:
        if node.name in scope.agents and node.name in undeclared and id(node) not in seen_attr:
            t = scope.agents[node.name]
            for f, _ in t.fields:
                scope.on_read(node.name, f)


def _walk(ast: jn.Template) -> tuple[list[jn.Name], set[str], list[jn.Getattr | jn.Getitem],
                                     list[jn.Filter | jn.Test]]:
    """One pass over a template, in document order: the names it reads, the names it sets, the
    `name.field` / `name["field"]` accesses, and the filters and tests it applies."""
    loads: list[jn.Name] = []
    stored: set[str] = set()
    attrs: list[jn.Getattr | jn.Getitem] = []
    calls: list[jn.Filter | jn.Test] = []
    stack: list[jn.Node] = [ast]
    while stack:
        node = stack.pop()
        if isinstance(node, jn.Name):
            if node.ctx == "load":
                loads.append(node)
            else:  # "store" (for, set, with) or "param" (macro arguments)
                stored.add(node.name)
        elif isinstance(node, (jn.Getattr, jn.Getitem)) and isinstance(node.node, jn.Name):
            attrs.append(node)
        elif isinstance(node, (jn.Filter, jn.Test)):
            calls.append(node)
        elif isinstance(node, jn.Macro):  # `{% macro m() %}` sets `m` (its name is not a Name node)
            stored.add(node.name)
        stack.extend(reversed(list(node.iter_child_nodes())))
    return loads, stored, attrs, calls


def _check_field(lit: n.Literal, lineno: int, base: str, field: str, scope: Scope, diags: Diagnostics,
                 where: str) -> None:
    needle = f"{base}.{field}"
    if base == "row":
        known = [f for f, _ in scope.row.fields]
        if field not in known and scope.row.kind == "obj":
            diags.error("E042", f"template `{where}` reads `row.{field}`, but the input has no field `{field}`",
                        _locate(lit, lineno, needle), did_you_mean(field, known)
                        or (f"input fields are {', '.join(known)}" if known else "the input declares no fields"))
    elif base in scope.agents:
        t = scope.agents[base]
        known = [f for f, _ in t.fields]
        if field not in known:
            diags.error("E041", f"template `{where}` reads `{base}.{field}`, but agent `{base}` has no "
                        f"field `{field}`", _locate(lit, lineno, needle),
                        did_you_mean(field, known) or f"its fields are {', '.join(known)}")
        else:
            scope.on_read(base, field)
    elif base == "visits" and field not in scope.agents and field not in scope.broken:
        diags.error("E040", f"template `{where}` reads `visits.{field}`, but no agent is named `{field}`",
                    _locate(lit, lineno, needle), did_you_mean(field, scope.agents))
    elif base == "last" and field not in ENTRY_FIELDS:
        diags.error("E041", f"template `{where}` reads `last.{field}`; `last` has "
                    f"{' and '.join(f'`{f}`' for f in ENTRY_FIELDS)}",
                    _locate(lit, lineno, needle), did_you_mean(field, ENTRY_FIELDS))

