"""The run summary's fields are declared in one place (`RunSummary`): a run on a real local Ray, into
JSON Lines and into Parquet (which adds the journal's fields), fills no field that is not declared."""

from __future__ import annotations

import pytest
from matrixlang.runtime.control.run import RunOptions, run
from matrixlang.runtime.control.summary import RunSummary
from support import ir_fixtures as F
from test_inputs import write_jsonl
from test_run_formats import coral_rows

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_every_field_of_a_summary_is_declared(ray_local, tmp_path, suffix):
    src, out = write_jsonl(tmp_path / "in.jsonl", coral_rows(4)), tmp_path / f"out{suffix}"
    s = run(F.coral(), RunOptions(input=str(src), output=str(out), backend="sim", progress="off",
                                  print_summary=False))
    declared = set(RunSummary.__annotations__)
    assert set(s) - declared == set(), "fields the summary writes but RunSummary does not declare"
    assert s["rows"] == 4 and s["by_status"]
