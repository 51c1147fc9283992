"""What a person sees while a run goes and when it ends: the progress bar on a terminal, plain lines
otherwise, and the summary table."""

from __future__ import annotations

import io
from types import SimpleNamespace

from matrixlang.runtime.control.progress import RunProgress, percentile, print_summary
from matrixlang.runtime.data.inputs import open_input


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def driver(rows: int, ok: int, in_flight: int, tokens: int, skipped: int = 0) -> SimpleNamespace:
    res = SimpleNamespace(rows=rows, by_status={"ok": ok, "failed": rows - ok}, completion_tokens=tokens,
                          skipped_done=skipped)
    return SimpleNamespace(res=res, inflight=dict.fromkeys(range(in_flight)))


def test_plain_lines_when_not_a_terminal_and_the_final_state_always():
    out = io.StringIO()
    with RunProgress(10, "auto", stream=out, interval_s=3600) as prog:
        prog.update(driver(0, 0, 4, 0), force=True)
        prog.update(driver(3, 2, 4, 300))             # within the interval: nothing
        prog.update(driver(10, 8, 0, 1000))            # the last one is printed on exit
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[mxc run] 0/10 rows  failed 0  in flight 4")
    assert lines[1].startswith("[mxc run] 10/10 rows  failed 2  in flight 0")
    assert "rows/s" in lines[1] and "tok/s" in lines[1]


def test_a_bar_on_a_terminal_and_nothing_when_off():
    tty = Tty()
    with RunProgress(5, "auto", stream=tty) as prog:
        assert prog.mode == "bar"
        prog.update(driver(5, 5, 0, 50, skipped=0), force=True)
    text = tty.getvalue()
    assert "rows" in text and "5/5" in text and "failed 0" in text
    quiet = io.StringIO()
    with RunProgress(5, "off", stream=quiet) as prog:
        prog.update(driver(5, 5, 0, 50), force=True)
    assert quiet.getvalue() == ""


def test_summary_table_has_statuses_reasons_rates_agents_and_the_cluster():
    summary = {
        "workflow": "coral", "rows": 20, "by_status": {"failed": 3, "ok": 17},
        "by_reason": {"failed/no_agreement": 3}, "skipped_done": 4, "duplicate_ids": 0,
        "readmitted": 0, "lost": 0, "elapsed_s": 2.5, "rows_per_s": 8.0, "tokens": 9000,
        "tokens_per_s": 3600.0, "steps": 200, "hops_per_s": 80.0, "peak_in_flight": 20, "max_in_flight": 256,
        "schedule": "row", "orchestrator": "p2p", "cluster": {"address": "127.0.0.1:6379", "started": True},
        "agents": {"teacher": {"replicas": 2, "calls": 100, "p50_s": 0.0123, "p95_s": 0.2},
                   "student": {"replicas": 1, "calls": 100, "p50_s": None, "p95_s": None}},
    }
    out = io.StringIO()
    print_summary(summary, out)
    text = out.getvalue()
    for needle in ("mxc run: coral", "rows written", "17", "failed/no_agreement", "skipped (already in output)",
                   "2.50 s", "9000  (3600/s)", "20 (max 256)", "row / p2p", "127.0.0.1:6379 (local Ray",
                   "teacher", "12.3 ms", "200.0 ms"):
        assert needle in text, needle
    assert "duplicate id" not in text        # zero counts are left out


def test_count_rows_and_percentile(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"a": 1}\n\n{"a": 2}\n   \n{"a": 3}\n')
    count = lambda spec, limit: open_input(spec).count(limit)  # noqa: E731 - the progress bar's total
    assert count(str(f), None) == 3 and count(str(f), 2) == 2 and count("-", None) is None
    assert percentile([], 0.5) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5 and percentile([5.0], 0.95) == 5.0
