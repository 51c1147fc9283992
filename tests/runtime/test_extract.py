"""Extracts: regex (DOTALL, first group or whole match) and json (whole reply, fenced or embedded)."""

from __future__ import annotations

from typing import Any

import pytest
from matrixlang.runtime.ir import IRError
from matrixlang.runtime.semantics.extract import Extractor, compile_regex, follow_path

REGEX_TABLE = [
    (r"Answer:\s*([A-J])", "I think... Answer: C", "C"),
    (r"Answer:\s*([A-J])", "Answer:\n\n  B and later Answer: D", "B"),     # first match; \s spans lines
    (r"Answer:\s*([A-J])", "no answer here", None),
    (r"^(Yes|No)", "Yes, it does.", "Yes"),
    (r"^(Yes|No)", " Yes", None),
    (r"```python\n(.*?)```", "Here:\n```python\ndef f(x):\n    return x\n```\nDone", "def f(x):\n    return x\n"),
    (r"\\boxed\{([^}]*)\}", r"so \boxed{42}.", "42"),
    (r"(ALL TESTS PASSED)", "...\nALL TESTS PASSED\n", "ALL TESTS PASSED"),
    (r"\d+", "abc 123 def", "123"),                                       # no group: whole match
    (r"a.b", "a\nb", "a\nb"),                                             # DOTALL
    (r"(x)?y", "y", None),                                                # group that did not take part
]


@pytest.mark.parametrize(("pattern", "text", "expected"), REGEX_TABLE)
def test_regex(pattern: str, text: str, expected: str | None) -> None:
    assert compile_regex(pattern)(text) == expected


JSON_TABLE = [
    ('{"clarity": 4, "depth": 2}', ["clarity"], 4),
    ('  {"clarity": 4}\n', ["clarity"], 4),
    ('Sure! ```json\n{"clarity": 5, "depth": 1}\n``` hope it helps', ["depth"], 1),
    ('```\n{"a": {"b": [7, 8, 9]}}\n```', ["a", "b", "1"], 8),
    ('Scores: {"clarity": 3} and {"clarity": 9}', ["clarity"], 3),          # first object inside
    ('list: [1, {"k": "v"}] end', ["1", "k"], "v"),
    ('prefix {not json} then {"ok": true}', ["ok"], True),
    ('{"a": [1, 2]}', ["a", "-1"], 2),
    ('{"a": [1, 2]}', ["a", "5"], None),
    ('{"a": [1, 2]}', ["a", "x"], None),
    ('{"a": null}', ["a", "b"], None),
    ('{"a": 1}', ["b"], None),
    ('{"a": 1}', ["a", "b"], None),
    ("no json at all", ["a"], None),
    ('{"broken": ', ["broken"], None),
    ('{"verdict": {"ok": "yes"}}', ["verdict"], {"ok": "yes"}),
    ('{"a": 1}', [], {"a": 1}),
]


@pytest.mark.parametrize(("text", "path", "expected"), JSON_TABLE)
def test_json(text: str, path: list[str], expected: Any) -> None:
    ex = Extractor([{"name": "v", "kind": "json", "path": path}], "a")
    assert ex.run(text) == {"v": expected}


def test_extractor_runs_all_in_declaration_order() -> None:
    ex = Extractor([
        {"name": "clarity", "kind": "json", "path": ["clarity"]},
        {"name": "word", "kind": "regex", "pattern": r"(\w+)"},
        {"name": "depth", "kind": "json", "path": ["depth"]},
    ], "scorer")
    out = ex.run('{"clarity": 4, "depth": 0}')
    assert list(out) == ["clarity", "word", "depth"]
    assert out == {"clarity": 4, "word": "clarity", "depth": 0}
    assert ex.run("nothing") == {"clarity": None, "word": "nothing", "depth": None}


def test_follow_path_on_scalars() -> None:
    assert follow_path(3, ["a"]) is None
    assert follow_path({"0": "zero"}, [0]) == "zero"


def test_bad_regex_is_an_ir_error_naming_agent_and_extract() -> None:
    with pytest.raises(IRError, match=r"agent 'a' extract 'x': bad regex '\(': missing \)"):
        Extractor([{"name": "x", "kind": "regex", "pattern": "("}], "a")
