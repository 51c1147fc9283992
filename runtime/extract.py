"""Extracts (docs/ir.md "Agents"): values pulled out of a step's reply text, compiled once per agent."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from .ir import IRError

_DECODER = json.JSONDecoder()
_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)
_OPENERS = re.compile(r"[\[{]")
_MAX_SCAN = 256  # start positions tried when looking for JSON inside prose
_UNPARSABLE = object()


def compile_regex(pattern: str) -> Callable[[str], str | None]:
    """`re.search(pattern, text, re.DOTALL)`: group 1, or the whole match without groups; else None."""
    try:
        rx = re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise IRError(f"bad regex {pattern!r}: {e}") from None
    if rx.groups:
        def first_group(text: str) -> str | None:
            m = rx.search(text)
            return None if m is None else m.group(1)

        return first_group

    def whole(text: str) -> str | None:
        m = rx.search(text)
        return None if m is None else m.group(0)

    return whole


def find_json(text: str) -> Any:
    """The reply parsed as JSON; else the first JSON object or array inside it (fenced blocks first).

    Returns the module's `_UNPARSABLE` sentinel when nothing parses (JSON `null` is a valid value).
    """
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    for m in _FENCE.finditer(text):
        try:
            return json.loads(m.group(1).strip())
        except ValueError:
            continue
    for n, m in enumerate(_OPENERS.finditer(text)):
        if n >= _MAX_SCAN:
            break
        try:
            value, _ = _DECODER.raw_decode(text, m.start())
            return value
        except ValueError:
            continue
    return _UNPARSABLE


def follow_path(value: Any, path: Sequence[str | int]) -> Any:
    """Follow `path` key by key (integer-like keys index arrays); None when anything is missing."""
    for key in path:
        if isinstance(value, dict):
            value = value.get(str(key))
        elif isinstance(value, list):
            try:
                i = int(key)
            except (TypeError, ValueError):
                return None
            if not -len(value) <= i < len(value):
                return None
            value = value[i]
        else:
            return None
        if value is None:
            return None
    return value


class Extractor:
    """All extracts of one agent; `run(text)` returns `{name: value}` in declaration order.
    JSON is parsed at most once per reply however many json extracts there are."""

    __slots__ = ("names", "_regex", "_json")

    def __init__(self, specs: Sequence[dict], agent: str) -> None:
        self.names = tuple(s["name"] for s in specs)
        self._regex: list[tuple[str, Callable[[str], str | None]]] = []
        self._json: list[tuple[str, tuple]] = []
        for s in specs:
            if s["kind"] == "regex":
                try:
                    self._regex.append((s["name"], compile_regex(s["pattern"])))
                except IRError as e:
                    raise IRError(f"agent {agent!r} extract {s['name']!r}: {e}") from None
            else:
                self._json.append((s["name"], tuple(s["path"])))

    def run(self, text: str) -> dict[str, Any]:
        out: dict[str, Any] = dict.fromkeys(self.names)
        for name, fn in self._regex:
            out[name] = fn(text)
        if self._json:
            doc = find_json(text)
            if doc is not _UNPARSABLE:
                for name, path in self._json:
                    out[name] = follow_path(doc, path)
        return out
