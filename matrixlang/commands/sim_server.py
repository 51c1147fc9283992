"""`mxc sim-server --host H --port P [...]`: the simulated LLM as an OpenAI-compatible HTTP server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys

from ..catalog import DURATION_UNITS

EPILOG = """examples:
  mxc sim-server --port 8000                               http://127.0.0.1:8000/v1
  mxc sim-server --port 8000 --replicas 2 --max-concurrency 256 --tokens 200..800 --ttft 150ms --per-token 20ms
  mxc sim-server --port 0 --error-rate 0.1 --timeout-rate 0.05 --seed 7   fault injection (port 0: any free port)
  mxc sim-server --port 8000 --rate-limit-rps 50 --rate-limit-tpm 200000   429 + Retry-After above the limits
  LLM_URL=http://127.0.0.1:8000/v1 mxc run coral.mx -i rows.jsonl -o out.jsonl

The server prints "mxc sim-server: listening on http://HOST:PORT/v1" once it accepts requests.
Requests carrying "mx_sim" (the runtime sends it to sim servers) get the workflow's `sim` replies;
see docs/services.md."""


def register(sub) -> None:
    p = sub.add_parser(
        "sim-server", help="serve the simulated LLM over HTTP (OpenAI-compatible)",
        description="Serve the built-in simulated LLM as an OpenAI-compatible server: /v1/models, "
                    "/v1/chat/completions, /v1/completions (streaming too), /metrics.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (8000; 0 picks a free one)")
    p.add_argument("--replicas", type=int, default=1, help="simulated replicas (1)")
    p.add_argument("--max-concurrency", type=int, default=64, metavar="K",
                   help="sequences one replica decodes at once, like vLLM's max_num_seqs (64)")
    p.add_argument("--tokens", default="16..64", metavar="A..B",
                   help="reply length in tokens when a request has no mx_sim hint (16..64)")
    p.add_argument("--ttft", default="10ms", metavar="T", help="time to first token (10ms)")
    p.add_argument("--per-token", default="0.5ms", metavar="T", help="decode time per token (0.5ms)")
    p.add_argument("--slowdown", type=float, default=0.5, metavar="X",
                   help="continuous-batching slowdown of decoding at a full replica: per-token time x "
                        "(1 + X * active / max-concurrency) (0.5; 0: no slowdown)")
    p.add_argument("--seed", type=int, default=0, help="seed of replies and injected faults (0)")
    p.add_argument("--error-rate", type=float, default=0.0, metavar="X", help="fraction answered 500")
    p.add_argument("--timeout-rate", type=float, default=0.0, metavar="X",
                   help="fraction held for --timeout-hold before answering")
    p.add_argument("--throttle-rate", type=float, default=0.0, metavar="X",
                   help="fraction answered 429 with Retry-After")
    p.add_argument("--retry-after", default="0", metavar="S", help="Retry-After of a 429, in seconds (0)")
    p.add_argument("--timeout-hold", default="600s", metavar="T", help="how long a timeout fault holds (600s)")
    p.add_argument("--rate-limit-rps", type=float, default=0.0, metavar="R",
                   help="requests per second admitted (a token bucket); more get 429 with Retry-After (0: no limit)")
    p.add_argument("--rate-limit-tpm", type=float, default=0.0, metavar="T",
                   help="tokens per minute admitted, prompt + completion tokens of each request (a token "
                        "bucket); more get 429 with Retry-After (0: no limit)")
    p.add_argument("--rate-limit-burst", default="1s", metavar="T",
                   help="how much budget the rate limits save up, as time at their rate (1s)")
    p.add_argument("--max-concurrent", type=int, default=0, metavar="N",
                   help="requests served at once; more get 429 at once (0: no limit)")
    p.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="a model name /v1/models lists (repeatable; default mx-sim); requests may name any")
    p.add_argument("--api-key-env", metavar="VAR",
                   help="require 'Authorization: Bearer $VAR' (the key is read from this variable)")
    p.set_defaults(handler=run)


def duration(text: str) -> float:
    """Seconds of `250ms`, `1.5s`, `2m` or a bare number of seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", text)
    if not m or (m.group(2) and m.group(2) not in DURATION_UNITS):
        raise ValueError(f"{text!r} is not a duration (like 250ms, 1.5s, 2m)")
    return float(m.group(1)) * DURATION_UNITS.get(m.group(2) or "s", 1.0)


def token_range(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*\.\.\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"--tokens expects A..B (like 200..800), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def run(args) -> int:
    from ..runtime.backends.simserver import SimServerConfig, serve_forever

    try:
        retry_after = float(args.retry_after)
        if retry_after < 0:
            raise ValueError("--retry-after must be >= 0")
        cfg = SimServerConfig(
            host=args.host, port=args.port, replicas=args.replicas, max_concurrency=args.max_concurrency,
            tokens=token_range(args.tokens), ttft_s=duration(args.ttft), per_token_s=duration(args.per_token), slowdown=args.slowdown,
            seed=args.seed, error_rate=args.error_rate, timeout_rate=args.timeout_rate,
            throttle_rate=args.throttle_rate, retry_after=args.retry_after.strip(),
            timeout_hold_s=duration(args.timeout_hold), models=tuple(args.model) or ("mx-sim",),
            api_key_env=args.api_key_env, rate_limit_rps=args.rate_limit_rps, rate_limit_tpm=args.rate_limit_tpm,
            rate_limit_burst_s=duration(args.rate_limit_burst), max_concurrent=args.max_concurrent)
        cfg.check()
    except ValueError as e:
        print(f"mxc sim-server: {e}", file=sys.stderr)
        return 2

    def ready(server) -> None:
        limits = "".join(f", {name} {v:g}" for name, v in (("rate limit rps", cfg.rate_limit_rps),
                                                           ("tpm", cfg.rate_limit_tpm),
                                                           ("max concurrent", cfg.max_concurrent)) if v)
        print(f"mxc sim-server: listening on http://{cfg.host}:{server.port}/v1 "
              f"(replicas {cfg.replicas} x {cfg.max_concurrency}, seed {cfg.seed}{limits})", flush=True)

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        with contextlib.suppress(asyncio.CancelledError):
            await serve_forever(cfg, ready)

    try:
        asyncio.run(main())
    except OSError as e:
        print(f"mxc sim-server: cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0
