"""Start-up cost of the python sandbox per snippet: `print(1)` run N times, median and p95.

    python bench/sandbox_startup.py [--n 200] [--ray]

Rows: a bare `python -I -S -c 'print(1)'` (the floor: interpreter start), `run_python` with the
network namespace and without it (`network = true`), and with `--ray` the same call through a
ToolService actor (`ray.get(svc.run.remote(...))`, one call at a time) on a local Ray.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from matrixlang.runtime.sandbox.bwrap import check_support, run_python

SPEC = {"kind": "python", "timeout_s": 10.0, "memory_bytes": 256 << 20, "cpu_s": 10.0, "network": False,
        "max_output_bytes": 65536, "replicas": 1, "max_concurrency": 4}


def measure(fn: Callable[[], None], n: int) -> tuple[float, float]:
    """Median and p95 wall time of `fn` in milliseconds (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[min(n - 1, round(0.95 * (n - 1)))]


def checked(spec: dict) -> Callable[[], None]:
    def call() -> None:
        res = run_python("print(1)", spec)
        assert res.stdout == "1\n" and res.exit_code == 0, res

    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="snippets per row")
    ap.add_argument("--ray", action="store_true", help="also measure through a ToolService actor")
    args = ap.parse_args()
    reason = check_support(SPEC)
    if reason:
        sys.exit(f"sandbox unsupported here: {reason}")
    rows = [
        ("bare python -I -S (no jail)",
         lambda: subprocess.run([sys.executable, "-I", "-S", "-c", "print(1)"], check=True, capture_output=True)),
        ("run_python, network = false", checked(SPEC)),
        ("run_python, network = true", checked({**SPEC, "network": True})),
    ]
    if args.ray:
        import ray
        from matrixlang.runtime.actors.tool_service import ToolService

        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        svc = ToolService.remote()

        def via_actor() -> None:
            res = ray.get(svc.run.remote("sandbox", SPEC, "print(1)"))
            assert res["stdout"] == "1\n", res

        rows.append(("ToolService actor round trip", via_actor))
    print(f"{'what':34} {'median ms':>10} {'p95 ms':>10}   (n={args.n}, load average {os.getloadavg()[0]:.1f})")
    for name, fn in rows:
        med, p95 = measure(fn, args.n)
        print(f"{name:34} {med:10.1f} {p95:10.1f}")


if __name__ == "__main__":
    main()
