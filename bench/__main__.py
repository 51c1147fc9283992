"""``python -m bench --suite quick|full [--only NAME[,NAME]] [--repeats K] [--out DIR]``.

Runs the benchmark suite on a local Ray (or $RAY_ADDRESS), writes ``bench/results/<suite>.json``,
the plots ``bench/results/<suite>_*.png`` and ``<suite>_table.md``, and prints the table of ratios.
Sections: scheduling, utilisation, overhead, memory, offload, scale_model (see bench/suite.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import SUITES
from .suite import RESULTS_DIR, SECTIONS, run_suite


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=sorted(SUITES), default="quick")
    ap.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    ap.add_argument("--repeats", type=int, help="repeats per measurement (default: the suite's)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory (bench/results)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the plots and the table from the suite's existing result file")
    ap.add_argument("--snapshot", nargs="?", const="HEAD", metavar="REF",
                    help="benchmark a frozen copy of a commit (HEAD), immune to edits made meanwhile")
    args = ap.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be >= 1")
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    for s in only or []:
        if s not in SECTIONS:
            ap.error(f"unknown section {s!r} (sections: {', '.join(SECTIONS)})")

    if args.replot:
        from .suite import replot

        replot(args.suite, args.out, print)
        return 0
    if args.snapshot:
        from .snapshot import reexec

        child = ["--suite", args.suite]
        child += ["--only", args.only] if args.only else []
        child += ["--repeats", str(args.repeats)] if args.repeats is not None else []
        child += ["--no-plots"] if args.no_plots else []
        return reexec(child, args.out.resolve(), args.snapshot)

    def log(msg: str) -> None:
        print(msg, flush=True)

    run_suite(args.suite, only, args.repeats, args.out, log, plots=not args.no_plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
