"""`mxc compile FILE [-o OUT]`: the IR as canonical JSON."""

from __future__ import annotations

import sys

from ..compiler import build_ir, dumps
from .common import check_or_report


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile a program to its IR (JSON)",
                       description="Compile a .mx program into the IR the runtime executes (docs/ir.md).")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of standard output")
    p.add_argument("--strict", action="store_true", help="warnings are errors")
    p.set_defaults(handler=run)


def run(args) -> int:
    _, an = check_or_report(args.file, args.strict)
    if an is None:
        return 1
    text = dumps(build_ir(an))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
