"""Fuzzing the runtime's untrusted inputs (bounded, derandomized, no Ray): input rows, model replies and
the IR given to `mxc run`. Whatever comes in, a row ends as a message (running, or failed with a
reason), every output line is valid JSON in UTF-8, and a malformed IR is a RunError, never a crash."""

from __future__ import annotations

import contextlib
import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from matrixlang.runtime.actors.sink import encode_line
from matrixlang.runtime.control.run import RunError, RunOptions, preflight
from matrixlang.runtime.semantics.engine import Engine, LLMCall, Reply, StepError
from support import ir_fixtures as F

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# Text with what breaks naive code: lone surrogates, NUL, CR, non-BMP characters, huge numbers' text.
TEXT = st.text(max_size=60) | st.lists(
    st.sampled_from(["a", "é", "\ud800", "\udc00", "\x00", "\r", "\n", "😀", "Answer: B", '"', "\\"]),
    max_size=12).map("".join)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | TEXT,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4), max_leaves=20)


def check_line(eng: Engine, msg) -> None:
    line = encode_line(eng.output_row(msg, [e.get("text") for e in msg.history]))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert isinstance(json.loads(line.decode("utf-8")), dict)


@pytest.fixture(scope="module")
def coral() -> Engine:
    return Engine(F.coral(), seed=0, backend="sim")


@FUZZ
@given(raw=st.binary(max_size=200) | JSONISH.map(lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass"))
       | st.fixed_dictionaries({"id": TEXT | st.integers(), "question": TEXT, "choices": st.lists(TEXT, max_size=3)},
                               optional={"answer": TEXT | st.none(), "extra": JSONISH})
       .map(lambda d: json.dumps(d).encode()))
def test_any_row_becomes_a_message_and_a_valid_line(coral: Engine, raw: bytes) -> None:
    msg = coral.new_message(raw, 7, 0.0)
    assert msg.status in ("running", "failed")
    if msg.status == "failed":
        assert msg.reason == "bad_input" and msg.detail
    check_line(coral, msg)


@FUZZ
@given(replies=st.lists(TEXT | st.text(max_size=400), min_size=1, max_size=12))
def test_any_reply_leaves_a_finished_row_with_a_valid_line(coral: Engine, replies: list[str]) -> None:
    msg = coral.new_message(json.dumps({"id": "r", "question": "q?", "choices": ["a", "b"]}), 0, 0.0)
    for text in replies:
        if msg.finished:
            break
        try:
            call = coral.prepare_call(msg, [e.get("text") for e in msg.history])
            assert isinstance(call, LLMCall)
            coral.apply_reply(msg, Reply(text, 1, 1), [e.get("text") for e in msg.history], 0.0)
        except StepError as e:
            coral.fail(msg, "failed", e.reason, e.detail, 0.0)
    check_line(coral, msg)


PATHS = [("agents",), ("states",), ("models",), ("limits",), ("output",), ("input_schema",),
         ("agents", "teacher"), ("states", "student"), ("states", "student", "transitions"),
         ("models", "llm"), ("models", "llm", "sim"), ("output", "fields"), ("input_schema", "properties")]


@FUZZ
@given(path=st.sampled_from(PATHS), value=JSONISH, drop=st.booleans())
def test_a_mutated_ir_is_a_run_error_or_runs(tmp_path_factory, path, value, drop) -> None:
    ir = copy.deepcopy(F.coral())
    node = ir
    for key in path[:-1]:
        node = node[key]
    if drop:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    tmp = tmp_path_factory.getbasetemp()
    (tmp / "in.jsonl").write_text('{"id": "a", "question": "q", "choices": []}\n')
    with contextlib.suppress(RunError):
        preflight(ir, RunOptions(input=str(tmp / "in.jsonl"), output=str(tmp / "out.jsonl"), backend="sim"))
