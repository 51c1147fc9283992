"""`mxc`: check, compile, draw, format and run .mx workflows.

Each subcommand lives in `matrixlang/commands/NAME.py` and exposes `register(subparsers)`.
Exit codes: 0 success, 1 errors in the program (or a failed run), 2 bad usage, 3 internal error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from . import __version__

COMMANDS = ("check", "compile", "graph", "fmt", "run", "sim_server", "serve")

EPILOG = """examples:
  mxc check workflows/*.mx                  check programs (exit 1 on errors)
  mxc check --strict --format json f.mx     warnings fail too; diagnostics as JSON
  mxc compile coral.mx -o coral.json        the IR (JSON) the runtime executes
  mxc graph coral.mx --format mermaid       draw the flow (dot, mermaid, svg, png)
  mxc fmt --check workflows/*.mx            is every file canonically formatted?
  mxc run coral.mx --input rows.jsonl --output out.jsonl --backend sim
"""


def build_parser(only: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; `only` limits it to some command modules (importing the front end costs ~0.5 s)."""
    parser = argparse.ArgumentParser(
        prog="mxc", description="The matrixlang compiler and runner for multi-agent workflows.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mxc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if only is None else only:
        try:
            module = importlib.import_module(f"matrixlang.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"matrixlang.commands.{name}":
                continue  # a command not built in this version
            raise
        module.register(sub)
    return parser


def _wanted(argv: list[str]) -> list[str] | None:
    """The one command module a command line needs, [] for --version, None (all) otherwise."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first.replace("-", "_") in COMMANDS:
        return [first.replace("-", "_")]
    if first is None and any(a in ("--version",) for a in argv) and not any(a in ("-h", "--help") for a in argv):
        return []
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_wanted(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("mxc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # never a traceback for users: say it is our bug
        print(f"mxc: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("  this is a bug in mxc, not in your program; please report it with the input file and this:",
              file=sys.stderr)
        print("  " + traceback.format_exc().strip().replace("\n", "\n  "), file=sys.stderr)
        return 3


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
