"""Counting what a chaos run left behind (bench/chaos.py): per output file, the input rows that are
missing (lost), written more than once (duplicated), lines that are not whole JSON (torn), rows whose
tool result is wrong, every status/reason, and the last run summary's claims against the file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


def write_input(path: Path, n: int) -> None:
    """``n`` rows ``{"id": "cK", "n": K}`` (the chaos workload's input)."""
    path.write_text("".join(json.dumps({"id": f"c{i}", "n": i}) + "\n" for i in range(n)), encoding="utf-8")


def count_output(path: Path, n_input: int) -> dict[str, Any]:
    """The figures of one output file of a run over ``write_input(_, n_input)``."""
    data = path.read_bytes() if path.exists() else b""
    parts = data.split(b"\n")
    tail = parts.pop()                       # after the last newline: empty unless a line is torn
    torn = 1 if tail else 0
    ids: Counter = Counter()
    statuses: Counter = Counter()
    wrong = 0
    for raw in parts:
        try:
            row = json.loads(raw.decode("utf-8"))
            meta = row["_meta"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            torn += 1
            continue
        ids[meta["id"]] += 1
        statuses[f"{meta['status']}/{meta['reason']}" if meta.get("reason") else meta["status"]] += 1
        if meta["status"] == "ok" and row.get("product") != str(7 * row.get("n", -1)):
            wrong += 1                        # the tool's work is not in the row
    expected = {f"c{i}" for i in range(n_input)}
    return {
        "output": str(path), "input_rows": n_input, "lines": len(parts) + (1 if tail else 0),
        "lost": len(expected - set(ids)), "duplicated": sum(c - 1 for c in ids.values() if c > 1),
        "torn": torn, "unknown_ids": len(set(ids) - expected), "wrong": wrong,
        "by_status": dict(sorted(statuses.items())),
    }


def check_summary(summary: dict[str, Any] | None, counted: dict[str, Any]) -> dict[str, Any]:
    """The last run summary of an output (the ``--resume`` that finished it) against the file: the rows
    it skipped as done plus the rows it wrote are the file's lines, and no status it claims to have
    written is missing from the file."""
    if summary is None:
        return {"checked": False, "why": "no summary (the run that finished it wrote none)"}
    lines = counted["lines"] - counted["torn"]
    claimed = summary["skipped_done"] + summary["rows"]
    file_status = counted["by_status"]
    over = {k: v for k, v in _flat(summary["by_status"], summary["by_reason"]).items()
            if v > file_status.get(k, 0)}
    return {"checked": True, "claimed_lines": claimed, "file_lines": lines,
            "agrees": claimed == lines and not over, "claims_beyond_file": over}


def _flat(by_status: dict[str, int], by_reason: dict[str, int]) -> dict[str, int]:
    """A summary's counts keyed as ``count_output`` keys them (``status`` or ``status/reason``)."""
    out = dict(by_reason)
    for status, n in by_status.items():
        rest = n - sum(v for k, v in by_reason.items() if k.startswith(status + "/"))
        if rest:
            out[status] = rest
    return out
