"""`mxc fmt FILE... [--check | -w/--write | --diff]`: canonical formatting."""

from __future__ import annotations

import argparse
import difflib
import sys

from ..errors import MxError
from ..formatter import format_source
from .common import print_diagnostics, read_source, summary_line

EPILOG = """examples:
  mxc fmt coral.mx                 print the formatted program
  mxc fmt -w workflows/*.mx        rewrite files in place
  mxc fmt --check workflows/*.mx   exit 1, listing the files that would change
  mxc fmt --diff coral.mx          show what would change

exit status: 0 done (or, with --check/--diff, nothing to change); 1 a file would change
(--check/--diff), has syntax errors or cannot be read; 2 bad usage."""


def register(sub) -> None:
    p = sub.add_parser(
        "fmt", help="format programs canonically",
        description="Format .mx programs canonically. The result compiles to the same IR, and "
                    "formatting it again changes nothing; comments are kept.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE", help=".mx files ('-' for standard input)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    mode.add_argument("-w", "--write", action="store_true", help="rewrite the files in place")
    mode.add_argument("--diff", action="store_true", help="print a unified diff of what would change")
    p.set_defaults(handler=run)


def run(args) -> int:
    if not (args.check or args.write or args.diff) and len(args.files) > 1:
        print("mxc fmt: give one file to print, or use --write, --check or --diff for several",
              file=sys.stderr)
        return 2
    if args.write and "-" in args.files:
        print("mxc fmt: cannot --write standard input", file=sys.stderr)
        return 2
    status = 0
    for path in args.files:
        src = read_source(path)
        if src is None:
            status = 1
            continue
        try:
            text = format_source(src)
        except MxError as exc:
            print_diagnostics(exc.diagnostics, src)
            print(f"{path}: {summary_line(len(exc.diagnostics), 0)}; not formatted", file=sys.stderr)
            status = 1
            continue
        original = src.text if path == "-" else _raw_text(path)
        changed = text != original
        if args.check:
            if changed:
                print(f"would reformat {path}")
                status = 1
        elif args.diff:
            if changed:
                sys.stdout.writelines(difflib.unified_diff(
                    original.splitlines(True), text.splitlines(True), f"{path} (original)", f"{path} (formatted)"))
                status = 1
        elif args.write:
            if changed:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
                print(f"reformatted {path}", file=sys.stderr)
        else:
            sys.stdout.write(text)
    return status


def _raw_text(path: str) -> str:
    """The file as it is on disk (`Source` normalizes line ends; fmt writes `\\n`)."""
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()
