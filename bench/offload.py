"""Item 5: offloading. Bytes serialized per hop (the pickled orchestrator message as it travels
between agents; an offloaded entry counts its reference, not its text: runtime ``--measure-bytes``)
with offloading (threshold 512 B; the default is 64 KiB, bench/offload_crossover.py) and without it (threshold -1), on ``longhist.mx``
rows: 16 steps of 2.5-5 KB replies. Two variants: the agents read only the previous reply (the
program as written: history carried, not re-read) and the agents send the whole conversation
(``history = true``: every offloaded text is fetched back at every step)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .catalog import WORKLOADS
from .config import SuiteConfig
from .measure import run_once
from .stats import ratio, spread

VARIANTS = {"reads_last": None, "reads_all": {"writer": {"history": True}, "editor": {"history": True}}}


def run_offload(cfg: SuiteConfig, tmp: Path, log: Callable[[str], None]) -> dict:
    wl = WORKLOADS["longhist"]
    out = {}
    for variant in cfg.off_variants:
        agents = VARIANTS[variant]
        runs: dict[str, list[dict]] = {"offload": [], "inline": []}
        for rep in range(cfg.off_repeats):
            for mode, thr in (("offload", 512), ("inline", -1)):
                r = run_once(wl, "p2p", rows=cfg.off_rows, in_flight=cfg.off_in_flight, tmp=tmp, seed=rep,
                             agents=agents, offload_threshold=thr, measure_bytes=True)
                runs[mode].append(r)
                log(f"offload {variant:10} {mode:7} rep {rep}: {r['bytes_per_hop'] or 0:9,.0f} B/hop  "
                    f"{r['hops_per_s']:6.0f} hops/s  CPU/hop {r['cpu_per_hop_ms']['all_run_processes']:.2f} ms")
        out[variant] = {
            "bytes_per_hop": {m: spread(r["bytes_per_hop"] for r in rs) for m, rs in runs.items()},
            "hops_per_s": {m: spread(r["hops_per_s"] for r in rs) for m, rs in runs.items()},
            "cpu_ms_per_hop": {m: spread(r["cpu_per_hop_ms"]["all_run_processes"] for r in rs)
                               for m, rs in runs.items()},
            "inline/offload bytes": spread(ratio(i["bytes_per_hop"], o["bytes_per_hop"])
                                           for o, i in zip(runs["offload"], runs["inline"], strict=True)),
            "offload/inline hops_per_s": spread(ratio(o["hops_per_s"], i["hops_per_s"])
                                                for o, i in zip(runs["offload"], runs["inline"], strict=True)),
            "runs": runs}
    return {"rows": cfg.off_rows, "in_flight": cfg.off_in_flight, "variants": out}
