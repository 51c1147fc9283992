"""Input rows: every language type, optional fields, ids, and bad-row messages naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from matrixlang.runtime.semantics.engine import Engine
from matrixlang.runtime.semantics.rows import BadRow, RowValidator
from support.ir_fixtures import coral, typed_input

GOOD = {"id": 5, "s": "x", "i": 1, "f": 1.5, "b": False, "j": {"any": [1]}, "ls": ["a"], "lli": [[1], []]}

BAD_TABLE = [
    ("{not json", "row is not valid JSON: Expecting property name"),
    ("[1, 2]", "row must be a JSON object, got array"),
    ('"text"', "row must be a JSON object, got string"),
    ({k: v for k, v in GOOD.items() if k != "s"}, "field 's': missing"),
    ({**GOOD, "s": 3}, "field 's': expected str, got integer"),
    ({**GOOD, "s": None}, "field 's': expected str, got null"),
    ({**GOOD, "i": "1"}, "field 'i': expected int, got string"),
    ({**GOOD, "i": 1.5}, "field 'i': expected int, got number"),
    ({**GOOD, "i": True}, "field 'i': expected int, got boolean"),
    ({**GOOD, "f": "1.5"}, "field 'f': expected float, got string"),
    ({**GOOD, "f": False}, "field 'f': expected float, got boolean"),
    ({**GOOD, "b": 0}, "field 'b': expected bool, got integer"),
    ({**GOOD, "ls": "a"}, "field 'ls': expected list[str], got string"),
    ({**GOOD, "ls": ["a", 2]}, "field 'ls[1]': expected str, got integer"),
    ({**GOOD, "lli": [[1], "x"]}, "field 'lli[1]': expected list[int], got string"),
    ({**GOOD, "lli": [[1], [2, "3"]]}, "field 'lli[1][1]': expected int, got string"),
    ({**GOOD, "o": 7}, "field 'o': expected str, got integer"),
    ({**GOOD, "ol": [1.0, "x"]}, "field 'ol[1]': expected float, got string"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_TABLE, ids=[m for _, m in BAD_TABLE])
def test_bad_rows(raw: Any, message: str) -> None:
    v = RowValidator(typed_input()["input_schema"])
    with pytest.raises(BadRow) as e:
        v.validate(v.parse(raw))
    assert str(e.value).startswith(message)


def test_good_row_normalised() -> None:
    v = RowValidator(typed_input()["input_schema"])
    raw = {**GOOD, "i": 3.0, "extra": {"kept": True}}
    row = v.validate(v.parse(json.dumps(raw)))
    assert row == {**GOOD, "i": 3, "extra": {"kept": True}, "o": None, "ol": None}
    assert type(row["i"]) is int
    assert v.validate(v.parse({**GOOD, "o": "here", "ol": [1, 2.5], "f": 2}))["ol"] == [1, 2.5]
    assert "o" not in raw  # a dict row is copied, not modified


def test_bad_row_keeps_valid_fields_and_nulls_every_invalid_one() -> None:
    v = RowValidator(typed_input()["input_schema"])
    row = v.parse({**GOOD, "s": 3, "ls": ["a", 1], "extra": 1})
    with pytest.raises(BadRow, match="^field 's': expected str, got integer$"):
        v.validate(row)
    assert row == {**GOOD, "s": None, "ls": None, "extra": 1, "o": None, "ol": None}


@pytest.mark.parametrize(("raw", "position", "expected"), [
    ({"id": "q-1"}, 3, "q-1"), ({"id": 17}, 3, 17), ({"id": None}, 3, 3), ({"id": True}, 3, 3),
    ({"id": [1]}, 3, 3), ({}, 9, 9),
])
def test_row_id(raw: dict, position: int, expected: Any) -> None:
    assert RowValidator(coral()["input_schema"]).row_id(raw, position) == expected


def test_row_id_is_position_without_id_field() -> None:
    schema = typed_input()["input_schema"]
    del schema["properties"]["id"]
    schema["x-id-field"] = None
    assert RowValidator(schema).row_id({"id": "ignored"}, 4) == 4


@pytest.mark.parametrize(("raw", "detail", "msg_id"), [
    ('{"id": "q1", "question": "Q", "choices": "A,B"}', "field 'choices': expected list[str], got string", "q1"),
    ('{"id": 12, "question": "Q", "choices": []}', "field 'id': expected str, got integer", 6),
    ('{"id": {"x": 1}, "question": "Q"}', "field 'id': expected str, got object", 6),
    ('{"id": "q2", "question": "Q"}', "field 'choices': missing", "q2"),
    ("oops", "row is not valid JSON", 6),
])
def test_engine_bad_input_messages(raw: str, detail: str, msg_id: Any) -> None:
    eng = Engine(coral())
    msg = eng.new_message(raw, 6, 50.0)
    assert (msg.status, msg.reason, msg.state, msg.steps) == ("failed", "bad_input", "fail", 0)
    assert msg.detail.startswith(detail)
    assert msg.id == msg_id
    out = eng.output_row(msg, [])
    assert out["_meta"]["id"] == msg_id
    assert out["_meta"]["reason"] == "bad_input"
    assert out["_meta"]["timing"] == {"admitted": 50.0, "finished": 50.0, "elapsed_s": 0.0}
    assert out["answer"] is None and out["transcript"] == []
    assert out["id"] == (msg_id if isinstance(msg_id, str) else None)   # row.id: null when invalid or absent
