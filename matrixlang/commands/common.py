"""What the subcommands share: reading sources and printing diagnostics."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..checker import Analysis, check
from ..diagnostics import Diagnostic, render_json, render_text
from ..source import Source


def read_source(path: str) -> Source | None:
    """The file's source, or None after printing why it cannot be read."""
    try:
        if path == "-":
            return Source("<stdin>", sys.stdin.read())
        return Source.from_path(path)
    except FileNotFoundError:
        print(f"mxc: {path}: no such file", file=sys.stderr)
    except IsADirectoryError:
        print(f"mxc: {path}: is a directory", file=sys.stderr)
    except UnicodeDecodeError as exc:
        print(f"mxc: {path}: not UTF-8 text ({exc.reason} at byte {exc.start})", file=sys.stderr)
    except OSError as exc:
        print(f"mxc: {path}: {exc.strerror}", file=sys.stderr)
    return None


def use_color(stream=None) -> bool:
    stream = stream or sys.stderr
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def print_diagnostics(diags: list[Diagnostic], source: Source, fmt: str = "text") -> None:
    if fmt == "json":
        print(render_json(diags, source))
    elif diags:
        sys.stderr.write(render_text(diags, source, use_color()))


def summary_line(n_err: int, n_warn: int) -> str:
    parts = []
    if n_err:
        parts.append(f"{n_err} error{'s' * (n_err != 1)}")
    if n_warn:
        parts.append(f"{n_warn} warning{'s' * (n_warn != 1)}")
    return ", ".join(parts)


def check_or_report(path: str, strict: bool = False) -> tuple[Source | None, Analysis | None]:
    """Check one file, printing its diagnostics; the analysis is None when it has (strict) errors."""
    src = read_source(path)
    if src is None:
        return None, None
    an = check(src)
    diags = an.diags.sorted()
    print_diagnostics(diags, src)
    failing = [d for d in diags if d.is_error or strict]
    if failing:
        n_err = sum(d.is_error for d in diags)
        print(f"{Path(path).name}: {summary_line(n_err, len(diags) - n_err)}", file=sys.stderr)
        return src, None
    return src, an
