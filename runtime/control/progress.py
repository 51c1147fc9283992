"""Progress display during a run and the final summary table.

On a terminal a rich progress bar shows rows done and failed, rows in flight, rows/s and tokens/s;
otherwise a plain line is printed every few seconds. Both write to standard error.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class RunProgress:
    """Progress of a run: ``mode`` is ``bar`` (rich), ``plain`` (periodic lines) or ``off``."""

    def __init__(self, total: int | None, mode: str = "auto", stream: TextIO | None = None,
                 interval_s: float = 5.0):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "plain"
        self.mode, self.total, self.interval_s = mode, total, interval_s
        self._t0 = time.monotonic()
        self._last = 0.0
        self._bar: Progress | None = None
        self._driver: Any = None
        self._task: Any = None

    def __enter__(self) -> RunProgress:
        if self.mode == "bar":
            self._bar = Progress(
                TextColumn("[bold]rows"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), console=Console(file=self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task("run", total=self.total, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._driver is not None and exc[0] is None:
            self.update(self._driver, force=True)      # the final state
        if self._bar is not None:
            self._bar.stop()

    def update(self, driver: Any, force: bool = False) -> None:
        """Called by the driver after each completion poll."""
        self._driver = driver
        now = time.monotonic()
        if self.mode == "off" or (not force and now - self._last < (0.2 if self.mode == "bar" else self.interval_s)):
            return
        self._last = now
        r = driver.res
        el = max(now - self._t0, 1e-9)
        failed = r.rows - r.by_status.get("ok", 0)
        info = (f"failed {failed}  in flight {len(driver.inflight)}  "
                f"{r.rows / el:.1f} rows/s  {r.completion_tokens / el:.0f} tok/s")
        if self._bar is not None:
            self._bar.update(self._task, completed=r.rows + r.skipped_done, info=info)
        else:
            total = f"/{self.total}" if self.total is not None else ""
            print(f"[mxc run] {r.rows + r.skipped_done}{total} rows  {info}  ({el:.0f}s)",
                  file=self.stream, flush=True)


def percentile(xs: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of xs by linear interpolation; None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def print_summary(summary: dict, stream: TextIO | None = None) -> None:
    """The final table: rows by status and reason, throughput, per-agent calls and latencies."""
    console = Console(file=stream or sys.stderr)
    t = Table(title=f"mxc run: {summary['workflow']}", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    if summary.get("stopped"):
        t.add_row("STOPPED", f"[red]{summary['stopped']}[/red]: re-run with --resume to finish")
    t.add_row("rows written", str(summary["rows"]))
    for status, n in summary["by_status"].items():
        t.add_row(f"  {status}", str(n))
    for reason, n in summary["by_reason"].items():
        t.add_row(f"    {reason}", str(n))
    if summary.get("output_rows") is not None:
        t.add_row("rows in the output", f"{summary['output_rows']} ({summary.get('output_format')})")
    if summary.get("skipped_done"):
        t.add_row("skipped (already in output)", str(summary["skipped_done"]))
    if summary.get("retried_errors"):
        t.add_row("run again (were errors)", str(summary["retried_errors"]))
    if summary.get("duplicate_ids"):
        t.add_row("duplicate ids (written failed)", str(summary["duplicate_ids"]))
    if summary.get("readmitted") or summary.get("lost"):
        t.add_row("re-admitted / lost", f"{summary['readmitted']} / {summary['lost']}")
    if summary.get("trials", 1) > 1:
        t.add_row("trials", f"{summary['trials']} per input row ({summary.get('input_rows', 0)} input rows)")
    if summary.get("until_ok") is not None:
        t.add_row("until_ok", f"{summary.get('ok_rows')} ok of {summary['until_ok']}; {summary.get('ended')}")
    if summary.get("drivers", 1) > 1:
        t.add_row("drivers", str(summary["drivers"]))
    t.add_row("elapsed", f"{summary['elapsed_s']:.2f} s")
    t.add_row("rows/s", f"{summary['rows_per_s']:.1f}")
    t.add_row("tokens (completion)", f"{summary['tokens']}  ({summary['tokens_per_s']:.0f}/s)")
    t.add_row("steps", f"{summary['steps']}  ({summary['hops_per_s']:.0f}/s)")
    t.add_row("peak in flight", f"{summary['peak_in_flight']} (max {summary['max_in_flight']})")
    t.add_row("mode", f"{summary['schedule']} / {summary['orchestrator']}")
    cluster = summary.get("cluster")
    if cluster:
        where = "local Ray, started for this run" if cluster["started"] else "attached"
        t.add_row("cluster", f"{cluster['address']} ({where})")
    console.print(t)
    if summary.get("agents"):
        a = Table(title="agents", title_justify="left")
        for col in ("agent", "replicas", "calls", "p50", "p95"):
            a.add_column(col, justify="right" if col != "agent" else "left")
        for name, s in summary["agents"].items():
            a.add_row(name, str(s["replicas"]), str(s["calls"]), _ms(s["p50_s"]), _ms(s["p95_s"]))
        console.print(a)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f} ms"
