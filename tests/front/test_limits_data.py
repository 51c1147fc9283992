"""`limits { trials  until_ok }`: compiled into the IR (1.2), checked like the other limits."""

from __future__ import annotations

import pytest

from matrixlang.checker import check
from matrixlang.compiler import compile_source
from matrixlang.source import Source

SRC = '''workflow w "t"
input {{ id: str }}
limits {{ {limits} }}
model m {{ backend = "sim" }}
agent a {{ model = m  prompt = "hi" }}
flow {{
  start -> a
  a -> end
}}
'''


def test_trials_and_until_ok_reach_the_ir():
    ir, an = compile_source(Source("t.mx", SRC.format(limits="trials = 4  until_ok = 1000")))
    assert ir is not None, [d.message for d in an.diags.items]
    assert ir["ir_version"] == "1.2" and ir["limits"]["trials"] == 4 and ir["limits"]["until_ok"] == 1000
    ir, _ = compile_source(Source("t.mx", SRC.format(limits="max_steps = 3")))
    assert ir["limits"]["trials"] == 1 and ir["limits"]["until_ok"] is None


@pytest.mark.parametrize("limits", ["trials = 0", "until_ok = 0", 'trials = "2"', "until_ok = 1.5"])
def test_bad_trials_or_targets_are_errors(limits):
    an = check(Source("t.mx", SRC.format(limits=limits)))
    errs = [d for d in an.diags.items if d.is_error]
    assert len(errs) == 1 and limits.split()[0] in errs[0].message
