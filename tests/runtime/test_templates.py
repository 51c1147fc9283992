"""Templates: sandboxed jinja2 with lenient Undefined, mapping keys first, null as "", seeded `random`."""

from __future__ import annotations

from typing import Any

import pytest
from matrixlang.runtime.ir import IRError
from matrixlang.runtime.semantics.templates import LazyRandom, RenderError, Template

CTX: dict[str, Any] = {
    "row": {"question": "2+2?", "choices": ["3", "4"], "items": "field, not method", "n": None},
    "last": None,
    "turns": 0,
    "teacher": {"text": None, "answer": None, "exit_code": None},
}

RENDER_TABLE = [
    ("{{ last.text if last else 'Begin.' }}", CTX, "Begin."),
    ("{{ last.text if last else 'Begin.' }}", {**CTX, "last": {"agent": "t", "text": "hi"}}, "hi"),
    ("{{ last.text }}", CTX, ""),                                   # lenient: attribute of null
    ("[{{ teacher.answer }}]", CTX, "[]"),                          # null renders empty
    ("{{ row.items }}", CTX, "field, not method"),                  # mapping key before dict method
    ("{{ row['items'] }}", CTX, "field, not method"),
    ("{{ row.nope }}|{{ nope }}", CTX, "|"),
    ('{% for c in row.choices %}{{ "ABCDEFGHIJ"[loop.index0] }}) {{ c }} {% endfor %}', CTX, "A) 3 B) 4 "),
    ("{{ row.question[:3] }}", CTX, "2+2"),
    ("{% if teacher.text %}{{ teacher.text[-2:] }}{% endif %}", CTX, ""),
    ("{{ turns + 1 }}", CTX, "1"),
    ("{{ row.choices | length }}", CTX, "2"),
    ("{{ row.choices | tojson }}", CTX, '["3", "4"]'),
    ("{{ row.get('question') }}", CTX, "2+2?"),                     # non-mutating methods stay usable
]


@pytest.mark.parametrize(("source", "ctx", "expected"), RENDER_TABLE, ids=[s for s, _, _ in RENDER_TABLE])
def test_render_table(source: str, ctx: dict, expected: str) -> None:
    assert Template(source, "t").render(ctx) == expected


ERROR_TABLE = [
    ("{{ row.choices.append('5') }}", "SecurityError"),             # immutable sandbox
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError"),
    ("{{ row.__init__.__globals__ }}", "SecurityError"),
    ("{{ teacher.text[-2:] }}", "TypeError"),                       # jinja slices null strictly
    ("{{ last.text.upper() }}", "UndefinedError"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ lipsum() }}", "UndefinedError"),                           # global-random helper removed
    ("{{ [] | random }}", ""),                                      # empty: undefined, renders empty
]


@pytest.mark.parametrize(("source", "error"), ERROR_TABLE, ids=[s for s, _ in ERROR_TABLE])
def test_render_errors(source: str, error: str) -> None:
    tmpl = Template(source, "agent a prompt template")
    if not error:
        assert tmpl.render(CTX) == ""
        return
    with pytest.raises(RenderError, match=f"^agent a prompt template: {error}"):
        tmpl.render(CTX)


def test_row_values_are_data_never_templates() -> None:
    row = {"question": "{{ 7 * 6 }} {% for x in range(3) %}x{% endfor %}"}
    assert Template("Q: {{ row.question }}", "t").render({"row": row}) == f"Q: {row['question']}"


def test_syntax_error_is_an_ir_error_naming_the_template() -> None:
    with pytest.raises(IRError, match=r"agent a system template: template syntax error at line 1"):
        Template("{% if x %}unclosed", "agent a system template")


def test_random_filter_is_seeded_per_render() -> None:
    tmpl = Template("{% for i in range(8) %}{{ ['A','B','C','D'] | random }}{% endfor %}", "t")
    a = [tmpl.render({}, LazyRandom(f"7:q{i}:0")) for i in range(20)]
    assert a == [tmpl.render({}, LazyRandom(f"7:q{i}:0")) for i in range(20)]      # same seed, same text
    assert a != [tmpl.render({}, LazyRandom(f"8:q{i}:0")) for i in range(20)]      # other seed differs
    assert len(set(a)) > 1                                                          # and it does vary
    assert all(len(s) == 8 and set(s) <= set("ABCD") for s in a)


def test_random_filter_ignores_the_global_generator() -> None:
    import random

    tmpl = Template("{{ range(1000) | random }}", "t")
    random.seed(1)
    first = tmpl.render({}, LazyRandom("k"))
    random.seed(2)
    assert tmpl.render({}, LazyRandom("k")) == first


def test_reads_lists_names_with_their_constant_attributes() -> None:
    tmpl = Template("{{ last.text if last else '' }}{{ teacher.answer }}{{ student['text'] }}"
                    "{% for h in history %}{{ h.text }}{% endfor %}{{ visits.teacher }}{{ range(2) | list }}", "t")
    assert tmpl.names == {"last", "teacher", "student", "history", "visits"}
    assert {("last", None), ("last", "text"), ("teacher", "answer"), ("student", "text"), ("history", None),
            ("visits", "teacher")} <= tmpl.reads
