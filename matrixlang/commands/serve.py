"""`mxc serve FILE.mx [--status] [--shutdown] [--address ADDR]`: the workflow's vLLM models on Ray Serve."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

EPILOG = """examples:
  ray start --head                                    a cluster that outlives mxc (once)
  mxc serve coral.mx --address auto                   deploy every backend = "vllm" model, wait until running
  mxc serve coral.mx --status                         one line per model: application, status, replicas
  mxc run coral.mx -i rows.jsonl -o out.jsonl --address auto     agents call the replicas
  mxc serve coral.mx --shutdown                       remove the applications (the replicas stop)
  mxc serve tiny.mx --engine-arg enforce_eager=true --engine-arg max_num_seqs=64
  mxc serve tiny.mx --foreground                      a local Ray holding the models until Ctrl-C

Without --address, $RAY_ADDRESS or else the cluster started by `ray start` on this machine is used.
Every VLLM_* variable of this environment is set in the replicas (e.g. VLLM_CPU_KVCACHE_SPACE=1).
exit status: 0 done (--status: every model running), 1 program errors or a failed deploy
(--status: a model not running), 2 unusable options or no cluster. See docs/vllm.md."""


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="deploy the workflow's vLLM models on Ray Serve (--status, --shutdown)",
        description="Deploy one Ray Serve application per `backend = \"vllm\"` model of the program "
                    "(replicas or autoscaling, tensor/pipeline parallel placement groups, engine "
                    "arguments, health checks), show their status, or remove them.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="a .mx program or its IR (.json)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true", help="show the applications' status")
    what.add_argument("--shutdown", action="store_true", help="delete the applications")
    what.add_argument("--foreground", action="store_true",
                      help="start a local Ray if needed, deploy, serve until Ctrl-C, then remove them")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster (default: $RAY_ADDRESS, else auto)")
    p.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="deploy only this model (repeatable; default: every vllm model)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra vLLM engine argument, VALUE read as JSON when it parses (repeatable)")
    p.add_argument("--cpus-per-worker", type=int, default=1, metavar="N",
                   help="without GPUs: CPUs Ray reserves, and cores pinned, per engine worker (1)")
    p.add_argument("--timeout", type=float, default=900.0, metavar="S",
                   help="seconds to wait for the replicas to run (900)")
    p.add_argument("--no-wait", action="store_true", help="return once the deploy is submitted")
    p.add_argument("--json", action="store_true", help="--status as JSON")
    p.set_defaults(handler=serve_cmd)


def engine_args(specs: list[str]) -> dict | None:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON is that value, else the string."""
    out: dict = {}
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            print(f"mxc serve: --engine-arg expects KEY=VALUE, got {spec!r}", file=sys.stderr)
            return None
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def load_ir(path: str) -> dict | None:
    """The IR of FILE: compiled from a .mx program, or read from a .json IR file."""
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except OSError as e:
            print(f"mxc serve: {path}: {e.strerror}", file=sys.stderr)
        except ValueError as e:
            print(f"mxc serve: {path}: not valid JSON: {e}", file=sys.stderr)
        return None
    from ..compiler import build_ir
    from .common import check_or_report

    _, an = check_or_report(path)
    return None if an is None else build_ir(an)


def connect(address: str | None, local: bool) -> bool:
    """Attach to the cluster (``local``: start one when none is given). False after saying why not."""
    import ray

    from matrixlang.runtime.control.cluster import connect as connect_or_start
    from matrixlang.runtime.control.cluster import unreachable

    if local:
        connect_or_start(address)
        return True
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    why = unreachable(address)
    if why is None:
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
            return True
        except (ConnectionError, RuntimeError, ValueError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
    hint = ("\n  a cluster with token authentication needs RAY_AUTH_MODE=token here (token: ~/.ray/auth_token)"
            if not os.environ.get("RAY_AUTH_MODE") else "")
    print(f"mxc serve: no Ray cluster at {address!r} ({why}).\n"
          f"  start one with `ray start --head` (or pass --address), or use --foreground{hint}", file=sys.stderr)
    return False


def serve_cmd(args) -> int:
    extra = engine_args(args.engine_arg)
    if extra is None:
        return 2
    ir = load_ir(args.file)
    if ir is None:
        return 1
    from matrixlang.runtime.backends import serve_deploy as sd

    names = sd.vllm_models(ir)
    if not names:
        print(f"mxc serve: {args.file}: no model with backend \"vllm\" (nothing to serve)", file=sys.stderr)
        return 2
    unknown = [m for m in args.model if m not in names]
    if unknown:
        print(f"mxc serve: --model {unknown[0]}: not a vllm model of this program ({', '.join(names)})",
              file=sys.stderr)
        return 2
    if args.cpus_per_worker < 1:
        print("mxc serve: --cpus-per-worker must be at least 1", file=sys.stderr)
        return 2
    if not connect(args.address, args.foreground):
        return 2
    if args.status:
        return _status(sd, ir, args.json)
    if args.shutdown:
        gone = sd.shutdown(ir)
        print(f"mxc serve: removed {', '.join(gone)}" if gone else "mxc serve: nothing deployed")
        return 0

    def say(text: str) -> None:
        print(f"mxc serve: {text}", file=sys.stderr)

    try:
        sd.deploy(ir, models=args.model or None, engine_args=extra, cpus_per_worker=args.cpus_per_worker,
                  wait=not args.no_wait,
                  timeout_s=args.timeout, progress=say)
    except sd.ServeDeployError as e:
        print(f"mxc serve: {e}", file=sys.stderr)
        return 1
    if args.foreground:
        return _hold(sd, ir, say)
    return 0


def _status(sd, ir: dict, as_json: bool) -> int:
    rows = sd.status(ir)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            reps = ", ".join(f"{n} {s.lower()}" for s, n in sorted(r["replicas"].items())) or "no replicas"
            line = f"{r['model']}: {r['app']} {r['status']} ({reps})"
            print(line + (f"\n  {r['message']}" if r["message"] else ""))
    return 0 if all(r["status"] == "RUNNING" for r in rows) else 1


def _hold(sd, ir: dict, say) -> int:
    """Serve until SIGINT/SIGTERM, then remove the applications."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    import ray

    addr = ray.get_runtime_context().gcs_address
    auth = "RAY_AUTH_MODE=token " if os.environ.get("RAY_AUTH_MODE") == "token" else ""
    say(f"serving on the Ray cluster at {addr}; Ctrl-C to stop. Run workflows with\n"
        f"  {auth}mxc run FILE.mx -i IN.jsonl -o OUT.jsonl --address {addr}")
    stop.wait()
    sd.shutdown(ir)
    say("stopped")
    return 0
