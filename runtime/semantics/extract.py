"""Extracts (docs/ir.md "Agents"): values pulled out of a step's reply text, compiled once per agent.

Regexes (extracts and the ``matches`` of guards) run on untrusted text, a model's reply or an input row:
they are checked with Python's ``re`` (the language's regex syntax) and run by the ``regex`` module,
which keeps ``re``'s semantics (its version 0) and bounds each search in time: a search that runs over
``REGEX_TIMEOUT_S`` raises :class:`RegexTimeout` instead of blocking its actor's event loop for good
(catastrophic backtracking).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import regex as _regex

from ..ir import IRError

REGEX_TIMEOUT_S = 1.0   # CPU time one search may take


class RegexTimeout(Exception):
    """A regex search ran over its time bound (the row fails with reason ``regex_timeout``)."""

    def __init__(self, pattern: str, timeout_s: float = REGEX_TIMEOUT_S) -> None:
        shown = pattern if len(pattern) <= 60 else pattern[:57] + "..."
        super().__init__(f"regex {shown!r} ran over its time bound of {timeout_s:g}s on this text")
        self.pattern = pattern


class BoundedRegex:
    """A compiled regex whose ``search`` is bounded in time (:class:`RegexTimeout`)."""

    __slots__ = ("pattern", "groups", "_rx", "timeout_s")

    def __init__(self, pattern: str, timeout_s: float = REGEX_TIMEOUT_S) -> None:
        """IRError (without the pattern: callers add where it is) when the pattern is not a valid regex."""
        try:
            re.compile(pattern, re.DOTALL)               # the language's syntax: Python's re
            self._rx = _regex.compile(pattern, _regex.DOTALL | _regex.VERSION0)
        except (re.error, _regex.error) as e:
            raise IRError(str(e)) from None
        except (OverflowError, RecursionError, MemoryError) as e:
            raise IRError(f"regex too large ({type(e).__name__})") from None
        self.pattern, self.groups, self.timeout_s = pattern, self._rx.groups, timeout_s

    def search(self, text: str) -> Any:
        try:
            return self._rx.search(text, timeout=self.timeout_s)
        except TimeoutError:
            raise RegexTimeout(self.pattern, self.timeout_s) from None

_DECODER = json.JSONDecoder()
_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)
_OPENERS = re.compile(r"[\[{]")
_MAX_SCAN = 256  # start positions tried when looking for JSON inside prose
_UNPARSABLE = object()


def compile_regex(pattern: str) -> Callable[[str], str | None]:
    """`re.search(pattern, text, re.DOTALL)`: group 1, or the whole match without groups; else None.
    Bounded in time (:class:`RegexTimeout`)."""
    try:
        rx = BoundedRegex(pattern)
    except IRError as e:
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
