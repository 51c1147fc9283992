"""Run a benchmark suite: every section (or some), results as JSON in ``out_dir``, plots, the table.

Sections: scheduling (item 1), utilisation (2), overhead (3), memory (4), offload (5), scale_model
(6, calibrated with the overhead section's costs: from this run, or from the suite's earlier result
file when ``--only scale_model``). ``--only`` merges into the suite's existing result file."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .config import SUITES, SuiteConfig
from .monitor import machine_info

SECTIONS = ("scheduling", "utilisation", "overhead", "memory", "offload", "scale_model")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _git() -> dict:
    """The commit measured, and whether the tree had uncommitted changes to what runs (a snapshot,
    ``--snapshot``, never has)."""
    snap = os.environ.get("MX_BENCH_SNAPSHOT")
    if snap:
        return {"commit": snap, "snapshot": True, "dirty": False}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "runtime", "matrixlang", "grammar", "bench"],
                               cwd=here.parent, capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return {"commit": "?", "snapshot": False, "dirty": None}
    return {"commit": commit, "snapshot": False, "dirty": bool(dirty)}


def _connect(connect: Callable[[str | None], bool], attempts: int = 3) -> bool:
    """Start (or attach to) Ray; a local start on a loaded machine sometimes times out: retry."""
    for i in range(attempts):
        try:
            return connect(None)
        except RuntimeError:
            if i == attempts - 1:
                raise
            time.sleep(5)
    return False


def _section(name: str, cfg: SuiteConfig, tmp: Path, log: Callable[[str], None], res: dict) -> dict:
    if name == "scheduling":
        from .scheduling import run_scheduling
        return run_scheduling(cfg, tmp, log)
    if name == "utilisation":
        from .utilisation import run_utilisation
        return run_utilisation(cfg, tmp, log)
    if name == "overhead":
        from .overhead import run_overhead
        return run_overhead(cfg, tmp, log)
    if name == "memory":
        from .memory import run_memory
        return run_memory(cfg, tmp, log)
    if name == "offload":
        from .offload import run_offload
        return run_offload(cfg, tmp, log)
    if name == "scale_model":
        from .overhead import run_overhead
        from .scale_model import run_scale_model
        overhead = res["sections"].get("overhead")
        if overhead is None:
            log("scale model: no overhead results to calibrate with; measuring them")
            overhead = res["sections"]["overhead"] = run_overhead(cfg, tmp, log)
        return run_scale_model(cfg, overhead, log, res["sections"].get("scheduling"))
    raise ValueError(f"unknown section {name!r} (sections: {', '.join(SECTIONS)})")


def run_suite(suite: str, only: list[str] | None = None, repeats: int | None = None,
              out_dir: Path = RESULTS_DIR, log: Callable[[str], None] = print, plots: bool = True) -> dict:
    """Run the suite's sections; write ``out_dir/<suite>.json``, plots and ``<suite>_table.md``."""
    from matrixlang.runtime.control.cluster import connect

    from . import plots as plotting
    from . import report

    cfg = SUITES[suite]
    if repeats is not None:
        cfg = dataclasses.replace(cfg, repeats=repeats, util_repeats=repeats, off_repeats=repeats)
    sections = list(only) if only else list(SECTIONS)
    for s in sections:
        if s not in SECTIONS:
            raise ValueError(f"unknown section {s!r} (sections: {', '.join(SECTIONS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{suite}.json"
    res: dict = {"sections": {}}
    if only and path.exists():
        res = json.loads(path.read_text(encoding="utf-8"))
    started = _connect(connect)
    t0 = time.time()
    res.update(suite=suite, git=_git(), machine=machine_info(),
               config=dataclasses.asdict(cfg), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    res.setdefault("section_meta", {})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in sections:
                ts, load0 = time.time(), os.getloadavg()
                log(f"== {name} (load average {load0[0]:.1f})")
                res["sections"][name] = _section(name, cfg, Path(tmp), log, res)
                res["section_meta"][name] = {"wall_s": round(time.time() - ts, 1),
                                             "loadavg_start": [round(x, 2) for x in load0],
                                             "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                                             "git": res["git"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                path.write_text(json.dumps(res, indent=1, default=str) + "\n", encoding="utf-8")   # partial
    finally:
        if started:
            import ray
            ray.shutdown()
    res["wall_s"] = round(time.time() - t0, 1)
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    path.write_text(json.dumps(res, indent=1, default=str) + "\n", encoding="utf-8")
    if plots:
        res["plots"] = [str(p) for p in plotting.make_plots(res, out_dir)]
    (out_dir / f"{suite}_table.md").write_text(report.markdown(res), encoding="utf-8")
    log(report.text(res))
    log(f"results: {path} ({res['wall_s']} s)")
    return res


def replot(suite: str, out_dir: Path = RESULTS_DIR, log: Callable[[str], None] = print) -> dict:
    """Redraw the plots and the table of ``out_dir/<suite>.json`` (no measurement)."""
    from . import plots as plotting
    from . import report

    res = json.loads((out_dir / f"{suite}.json").read_text(encoding="utf-8"))
    for p in plotting.make_plots(res, out_dir):
        log(f"wrote {p}")
    (out_dir / f"{suite}_table.md").write_text(report.markdown(res), encoding="utf-8")
    log(report.text(res))
    return res
