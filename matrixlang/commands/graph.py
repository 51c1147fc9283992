"""`mxc graph FILE [--format dot|mermaid|svg|png] [-o OUT]`: draw the flow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..draw import FORMATS, LABEL_WIDTH, GraphvizFailed, GraphvizMissing, draw
from .common import check_or_report

EPILOG = """examples:
  mxc graph coral.mx                          DOT text on standard output
  mxc graph coral.mx --format mermaid         Mermaid (paste into Markdown on GitHub)
  mxc graph coral.mx -o coral.svg             the format follows the extension (svg, png, dot, mmd)
  mxc graph coral.mx --format png -o coral.png --label-width 0

svg and png are drawn locally by Graphviz's `dot` (Debian/Ubuntu: apt-get install graphviz).
Dashed edges are guarded (`when`), solid ones unconditional; "2: guard" is the order in which a
state's transitions are tried. Boxes are LLM agents, component shapes are tool agents."""

_SUFFIX = {".dot": "dot", ".gv": "dot", ".mmd": "mermaid", ".mermaid": "mermaid", ".svg": "svg", ".png": "png"}


def register(sub) -> None:
    p = sub.add_parser("graph", help="draw the flow (dot, mermaid, svg, png)",
                       description="Draw a program's flow: start, agents, end and each `fail` reason.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", "-f", choices=FORMATS, help="output format (default: from -o's extension, else dot)")
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of standard output")
    p.add_argument("--label-width", type=int, default=LABEL_WIDTH, metavar="N",
                   help=f"shorten guard labels to N characters ({LABEL_WIDTH}; 0: never)")
    p.set_defaults(handler=run)


def run(args) -> int:
    fmt = args.format or (_SUFFIX.get(Path(args.output).suffix.lower(), "dot") if args.output else "dot")
    if fmt == "png" and not args.output and sys.stdout.isatty():
        print("mxc graph: not writing PNG bytes to a terminal; use -o FILE.png", file=sys.stderr)
        return 2
    _, an = check_or_report(args.file)
    if an is None:
        return 1
    try:
        data = draw(an, fmt, args.label_width)
    except GraphvizMissing as exc:
        print(f"mxc graph: {exc}", file=sys.stderr)
        return 1
    except GraphvizFailed as exc:
        print(f"mxc graph: {exc}", file=sys.stderr)
        return 1
    if args.output:
        Path(args.output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0
