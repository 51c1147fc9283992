"""Jinja2 templates of agents (system, prompt, input, sim), compiled once per workflow, rendered sandboxed.

Rendering rules beyond plain jinja2 (all in an ImmutableSandboxedEnvironment, default lenient Undefined):
- `obj.name` on a mapping reads the key first (so a row field called `items` or `values` is the field,
  not the dict method); other objects go through the sandbox's checked attribute lookup.
- `{{ x }}` with x null renders as the empty string (not Python's "None").
- the `random` filter draws from a per-step `random.Random(seed)` (deterministic across processes),
  never from the global generator; the globals are exactly `names.TEMPLATE_GLOBALS` (`lipsum`, which
  uses the global generator, is removed).
- whitespace is kept as written, a trailing newline included (`names.TEMPLATE_SETTINGS`).

`ENV` is the table of template names: the checker parses templates with it and takes the filters
and tests it accepts from `FILTERS` and `TESTS` (matrixlang/templates.py).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from jinja2 import TemplateSyntaxError, Undefined, meta, nodes, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..ir import IRError
from ..names import TEMPLATE_GLOBALS, TEMPLATE_SETTINGS


class MissingText(RuntimeError):
    """A history text needed by a template or guard was not supplied by the caller (see history_need)."""


class RenderError(Exception):
    """A template failed while rendering (undefined call, type error, sandbox violation, ...)."""


class LazyRandom:
    """A `random.Random(seed)` created on first use (most templates never draw)."""

    __slots__ = ("seed", "_rng")

    def __init__(self, seed: str) -> None:
        self.seed = seed
        self._rng: random.Random | None = None

    def get(self) -> random.Random:
        if self._rng is None:
            self._rng = random.Random(self.seed)
        return self._rng


_CURRENT_RNG: ContextVar[LazyRandom | None] = ContextVar("matrixlang_template_rng", default=None)


@pass_context
def _random_filter(context: Context, seq: Any) -> Any:
    """`x | random`: a random item drawn from the step's seeded generator."""
    lazy = _CURRENT_RNG.get()
    rng = lazy.get() if lazy is not None else random.Random(0)
    items = seq if isinstance(seq, Sequence) else list(seq)
    if not items:
        return context.environment.undefined("No random item, sequence was empty.")
    return rng.choice(items)


class _Env(ImmutableSandboxedEnvironment):
    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


def _finalize(value: Any) -> Any:
    return "" if value is None else value


ENV = _Env(**TEMPLATE_SETTINGS, finalize=_finalize, undefined=Undefined)
ENV.filters["random"] = _random_filter
ENV.globals = {k: ENV.globals[k] for k in TEMPLATE_GLOBALS}
_GLOBALS = dict(ENV.globals)
FILTERS = frozenset(ENV.filters)
"""Every filter a template may apply (`x | name`)."""
TESTS = frozenset(ENV.tests)
"""Every test a template may apply (`x is name`)."""


class Template:
    """One compiled template. `names`: context names it reads; `reads`: `(name, attr)` pairs where
    attr is the constant attribute/key read on that name, or None when the whole value is used."""

    __slots__ = ("source", "label", "names", "reads", "_tmpl", "_globals")

    def __init__(self, source: str, label: str) -> None:
        self.source, self.label = source, label
        try:
            ast = ENV.parse(source)
            self._tmpl = ENV.from_string(ast)
        except TemplateSyntaxError as e:
            raise IRError(f"{label}: template syntax error at line {e.lineno}: {e.message}") from None
        self._globals = frozenset(self._tmpl.globals)   # its globals' names, read once (not per render)
        self.names = frozenset(meta.find_undeclared_variables(ast))
        self.reads = frozenset(_template_reads(ast, self.names))

    def render(self, ctx: Mapping[str, Any], rng: LazyRandom | None = None) -> str:
        """Render with context `ctx` (at least `self.names`); raise RenderError on failure."""
        token = _CURRENT_RNG.set(rng)
        try:
            # what Template.render does, minus copying the jinja globals into a new dict and listing
            # the names of its globals (a ChainMap) on every call
            tmpl = self._tmpl
            context = ENV.context_class(ENV, {**_GLOBALS, **ctx}, tmpl.name, tmpl.blocks, globals=self._globals)
            return "".join(tmpl.root_render_func(context))
        except MissingText:
            raise
        except Exception as e:  # jinja raises many kinds: UndefinedError, SecurityError, TypeError, ...
            raise RenderError(f"{self.label}: {type(e).__name__}: {e}") from None
        finally:
            _CURRENT_RNG.reset(token)


def compile_template(source: str | None, label: str) -> Template | None:
    """Compile a template source, or None for None; raise IRError on syntax errors."""
    return None if source is None else Template(source, label)


def _template_reads(ast: nodes.Template, names: frozenset[str]) -> set[tuple[str, str | None]]:
    out: set[tuple[str, str | None]] = set()

    def walk(node: nodes.Node, parent: nodes.Node | None) -> None:
        if isinstance(node, nodes.Name) and node.ctx == "load" and node.name in names:
            key: str | None = None
            if isinstance(parent, nodes.Getattr) and parent.node is node:
                key = parent.attr
            elif (isinstance(parent, nodes.Getitem) and parent.node is node
                  and isinstance(parent.arg, nodes.Const) and isinstance(parent.arg.value, str)):
                key = parent.arg.value
            out.add((node.name, key))
        for child in node.iter_child_nodes():
            walk(child, node)

    walk(ast, None)
    return out

