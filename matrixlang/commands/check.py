"""`mxc check FILE... [--strict] [--format text|json]`."""

from __future__ import annotations

import json
import sys

from ..checker import check
from ..diagnostics import render_text
from .common import read_source, summary_line, use_color


def register(sub) -> None:
    p = sub.add_parser("check", help="check programs and report every error and warning",
                       description="Check .mx programs. Exit 0 when clean, 1 on errors (or warnings with --strict).")
    p.add_argument("files", nargs="+", metavar="FILE", help=".mx files ('-' for standard input)")
    p.add_argument("--strict", action="store_true", help="warnings fail the check too")
    p.add_argument("--format", choices=("text", "json"), default="text", help="diagnostics format")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing for clean files")
    p.set_defaults(handler=run)


def run(args) -> int:
    status = 0
    report = []
    for path in args.files:
        src = read_source(path)
        if src is None:
            status = max(status, 1)
            report.append({"file": path, "ok": False, "error": "unreadable", "diagnostics": []})
            continue
        an = check(src)
        diags = an.diags.sorted()
        n_err = sum(d.is_error for d in diags)
        n_warn = len(diags) - n_err
        failed = n_err > 0 or (args.strict and n_warn > 0)
        status = max(status, int(failed))
        if args.format == "json":
            report.append({"file": path, "ok": not failed, "diagnostics": [d.to_dict(src) for d in diags]})
            continue
        if diags:
            sys.stderr.write(render_text(diags, src, use_color()))
            print(f"{src.path}: {summary_line(n_err, n_warn)}", file=sys.stderr)
        elif not args.quiet:
            print(f"{src.path}: ok")
    if args.format == "json":
        print(json.dumps(report, indent=2))
    return status
