"""Run the benchmarks on a frozen copy of a commit (``python -m bench --snapshot``).

Several people edit the runtime while benchmarks run; Ray starts new worker processes for every run,
and they import whatever is on disk at that moment, so a long suite could mix two versions of the
runtime (and hang or measure nonsense). ``snapshot`` extracts a commit with ``git archive`` into a
temporary directory laid out as the package is installed (``matrixlang/``, ``matrixlang/runtime/``,
``matrixlang/grammar/``, ``bench/``), and ``reexec`` runs ``python -m bench`` again with that
directory first on PYTHONPATH (Ray's workers inherit it), so every process imports the snapshot."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = {"matrixlang": "matrixlang", "runtime": "matrixlang/runtime", "grammar": "matrixlang/grammar",
          "bench": "bench", "tests/support": "tests/support"}


def snapshot(ref: str = "HEAD") -> tuple[Path, str]:
    """Extract ``ref`` into a new temporary directory laid out as installed; (its path, the commit)."""
    commit = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    blob = subprocess.run(["git", "archive", "--format=tar", commit, *LAYOUT], cwd=ROOT, capture_output=True,
                          check=True).stdout
    dest = Path(tempfile.mkdtemp(prefix=f"mx-bench-{commit[:10]}-"))
    src = dest / "src"
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(src, filter="data")
    for frm, to in LAYOUT.items():
        target = dest / "pkg" / to
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src / frm), str(target))
    shutil.rmtree(src)
    return dest, commit


def reexec(argv: list[str], out_dir: Path, ref: str = "HEAD") -> int:
    """Run ``python -m bench ARGV --out OUT_DIR`` on a snapshot of ``ref``; returns its exit code."""
    dest, commit = snapshot(ref)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(dest / "pkg"), os.environ.get("PYTHONPATH")])),
               MX_BENCH_SNAPSHOT=commit)
    print(f"benchmarking a snapshot of {commit[:10]} in {dest}", flush=True)
    try:
        return subprocess.run([sys.executable, "-m", "bench", *argv, "--out", str(out_dir)], cwd=dest / "pkg",
                              env=env).returncode
    finally:
        shutil.rmtree(dest, ignore_errors=True)
