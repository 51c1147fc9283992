"""`mxc run FILE.mx|FILE.json --input IN --output OUT ...`: run a workflow on Ray."""

from __future__ import annotations

import argparse
import json
import sys

from matrixlang.runtime.names import ADAPTIVE_CONCURRENCY, MAX_IN_FLIGHT, OFFLOAD_THRESHOLD

EPILOG = """examples:
  mxc run workflows/coral.mx --input workflows/data/coral.jsonl --output out.jsonl --backend sim
  mxc run coral.json --input rows.jsonl --output out.jsonl --resume --summary s.json
  mxc run coral.mx --input rows.jsonl --output out.parquet --resume --retry-errors
  mxc run coral.mx --input rows.jsonl --output out.jsonl --schedule batch --max-in-flight 128
  mxc run coral.mx --input rows.jsonl --output out.jsonl --address ray://head:10001 --replicas teacher=4
  mxc run coral.mx --input 'shards/*.parquet' --output out.parquet --trials 4 --until-ok 10000
  mxc run coral.mx --input hf:data/saved:train --output out.jsonl.zst

inputs: JSON Lines (.jsonl, also .jsonl.gz and .jsonl.zst; - for stdin), Parquet (a .parquet file, a
folder of shards or a quoted glob), a Hugging Face dataset saved with save_to_disk (its folder, or
hf:PATH[:SPLIT]). outputs by name: .parquet, .jsonl.zst, .jsonl.gz (written from OUT.journal.jsonl when
the run completes) or JSON Lines (any other name).

exit status: 0 when the run completed (rows that failed are written with their reason),
1 when the program has errors, 2 when the input, output or options are unusable,
4 when the run stopped because its output could not be written (a full disk): --resume finishes it."""


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="run a workflow over an input (JSONL, Parquet, a saved dataset) on Ray",
        description="Run a .mx program (or its compiled IR, a .json file) over every row of an input "
                    "(JSON Lines, Parquet shards or a saved Hugging Face dataset), peer to peer on Ray, "
                    "writing one output row per input row (and trial).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="a .mx program or its IR (.json)")
    p.add_argument("--input", "-i", required=True, metavar="IN",
                   help="input rows: .jsonl[.gz|.zst] (- for stdin), .parquet, a folder or glob of Parquet "
                        "shards, a saved dataset's folder or hf:PATH[:SPLIT]")
    p.add_argument("--output", "-o", required=True, metavar="OUT",
                   help="output rows: .parquet, .jsonl.zst, .jsonl.gz or JSON Lines (any other name)")
    p.add_argument("--trials", type=int, metavar="K",
                   help="run each input row K times, ids ID#k (default: the program's limits.trials, 1)")
    p.add_argument("--until-ok", type=int, metavar="N",
                   help="stop admitting rows once N rows with status ok are in the output; the rows in "
                        "flight finish (default: the program's limits.until_ok, none)")
    p.add_argument("--drivers", type=int, default=1, metavar="N",
                   help="shard admission and completion tracking over N driver actors, each with its share "
                        "of --max-in-flight (1: in this process)")
    p.add_argument("--backend", choices=["sim"], help="replace every model by the built-in simulator")
    p.add_argument("--max-in-flight", type=int, default=MAX_IN_FLIGHT, metavar="N",
                   help=f"rows in the system at once ({MAX_IN_FLIGHT})")
    p.add_argument("--colocate", choices=["auto", "all", "none"], default="auto",
                   help="run every agent role in the same actors, handing a row from agent to agent in place "
                        "(auto: when every model is an openai/vllm service and the roles have equal replicas)")
    p.add_argument("--schedule", choices=["row", "batch"], default="row",
                   help="row: admit a row as soon as one finishes (default); batch: wait for whole batches")
    p.add_argument("--orchestrator", choices=["p2p", "central"], default="p2p",
                   help="p2p: agents route messages themselves (default); central: through one coordinator")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated replies (0)")
    p.add_argument("--resume", action="store_true", help="skip rows whose id is already in the output")
    p.add_argument("--retry-errors", action="store_true",
                   help="with --resume: run again the rows written with status error (model, tool or "
                        "runtime errors, e.g. after an outage); their old rows are removed first, from "
                        "any output format (a Parquet or compressed output and its journal alike)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--summary", metavar="S.json", help="write the run summary as JSON")
    p.add_argument("--limit", type=int, metavar="N", help="run only the first N input rows")
    p.add_argument("--offload-threshold", type=int, default=OFFLOAD_THRESHOLD, metavar="BYTES",
                   help="history texts larger than this go to Ray's object store when a row moves between "
                        f"actors ({OFFLOAD_THRESHOLD}; -1: never)")
    p.add_argument("--adaptive-concurrency", choices=["on", "off"], default="on" if ADAPTIVE_CONCURRENCY else "off",
                   help="on: the calls in flight to each endpoint of an openai model adapt to the server "
                        "(cut to 3/4 on 429/503, timeouts or latency rising, Retry-After pausing the endpoint, "
                        "grown back on success; AIMD); off: as many calls as rows in flight "
                        f"({'on' if ADAPTIVE_CONCURRENCY else 'off'})")
    p.add_argument("--address", metavar="ADDR", help="attach to this Ray cluster (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--replicas", action="append", default=[], metavar="AGENT=N",
                   help="actors for an agent role, overriding the program (repeatable)")
    p.add_argument("--progress", choices=["auto", "bar", "plain", "off"], default="auto",
                   help="progress display on standard error (auto: a bar on a terminal)")
    p.add_argument("--no-coalesce", action="store_true", help=argparse.SUPPRESS)   # benchmarks only
    p.add_argument("--run-id", help=argparse.SUPPRESS)   # names the run's Ray actors (tests, operators)
    p.set_defaults(handler=run)


def _replicas(specs: list[str]) -> dict[str, int] | None:
    out: dict[str, int] = {}
    for spec in specs:
        name, sep, n = spec.partition("=")
        if not sep or not name or not n.strip().isdigit():
            print(f"mxc run: --replicas expects AGENT=N, got {spec!r}", file=sys.stderr)
            return None
        out[name.strip()] = int(n)
    return out


def _load_ir(path: str) -> dict | None:
    """The IR of FILE: compiled from a .mx program, or read from a .json IR file."""
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except OSError as e:
            print(f"mxc run: {path}: {e.strerror}", file=sys.stderr)
        except ValueError as e:
            print(f"mxc run: {path}: not valid JSON: {e}", file=sys.stderr)
        return None
    from ..commands.common import check_or_report
    from ..compiler import build_ir

    _, an = check_or_report(path)
    return None if an is None else build_ir(an)


def run(args) -> int:
    replicas = _replicas(args.replicas)
    if replicas is None:
        return 2
    ir = _load_ir(args.file)
    if ir is None:
        return 1
    from matrixlang.runtime.control.run import RunError, RunOptions, RunStopped
    from matrixlang.runtime.control.run import run as run_ir

    opts = RunOptions(
        input=args.input, output=args.output, backend=args.backend, max_in_flight=args.max_in_flight,
        schedule=args.schedule, orchestrator=args.orchestrator, seed=args.seed, resume=args.resume,
        retry_errors=args.retry_errors,
        overwrite=args.overwrite, summary=args.summary, limit=args.limit,
        offload_threshold=args.offload_threshold, address=args.address, replicas=replicas,
        progress=args.progress, coalesce=not args.no_coalesce, run_id=args.run_id,
        colocate=args.colocate, adaptive_concurrency=args.adaptive_concurrency == "on",
        trials=args.trials, until_ok=args.until_ok, drivers=args.drivers)
    try:
        run_ir(ir, opts)
    except RunStopped as e:
        print(f"mxc run: {e}", file=sys.stderr)
        return 4
    except RunError as e:
        print(f"mxc run: {e}", file=sys.stderr)
        return 2
    return 0
