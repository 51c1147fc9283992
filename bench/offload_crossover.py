"""Where offloading history texts starts to pay: hops/s and CPU per hop with every reply offloaded
against every reply inline, over reply sizes, with the two agents on the same node and on two nodes.

The workload is ``longhist.mx`` (two agents pass replies back and forth, 16 steps, the history carried
in the message but not re-read), with every reply ``--sizes`` words long (about 6.3 bytes a word) and a
zero-latency model, so hops are what is measured. "offloaded" sets the threshold below the reply size,
"inline" turns offloading off. Across nodes: a ``ray.cluster_utils.Cluster`` of two nodes on this
machine, one agent pinned on each (the bytes cross the object manager between two raylets, as between
machines, but over loopback: a real network makes inline bytes dearer).

    python bench/offload_crossover.py [--sizes 64,512,4096,16384] [--rows 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from bench.catalog import WORKLOADS  # noqa: E402
from bench.measure import run_once  # noqa: E402
from bench.monitor import machine_info  # noqa: E402


def sweep(sizes: list[int], rows: int, in_flight: int, tmp: Path, where: str, replicas: dict) -> list[dict]:
    wl = WORKLOADS["longhist"]
    out = []
    for words in sizes:
        res = {}
        for mode, thr in (("offloaded", max(1, words)), ("inline", -1)):   # words < bytes: every reply goes
            r = run_once(wl, "p2p", rows=rows, in_flight=in_flight, tmp=tmp, overrides={"llm": {
                "tokens": [words, words], "ttft_s": 0.0, "per_token_s": 0.0}}, offload_threshold=thr,
                measure_bytes=True, colocate="none", replicas=replicas)
            res[mode] = {"hops_per_s": round(r["hops_per_s"], 1), "bytes_per_hop": round(r["bytes_per_hop"] or 0),
                         "cpu_ms_per_hop": round(r["cpu_per_hop_ms"]["all_run_processes"], 3)}
        row = {"where": where, "reply_words": words, **res,
               "offloaded/inline hops/s": round(res["offloaded"]["hops_per_s"] / res["inline"]["hops_per_s"], 3)}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="64,512,4096,16384", help="reply sizes in words (~6.3 bytes each)")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--in-flight", type=int, default=32)
    p.add_argument("--where", default="node,nodes", help="node (one node), nodes (two nodes), or both")
    p.add_argument("--json")
    args = p.parse_args(argv)
    import ray

    sizes = [int(x) for x in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="mx-offload-"))
    results = []
    if "node" in args.where.split(","):
        ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 configure_logging=False)
        results += sweep(sizes, args.rows, args.in_flight, tmp, "one node", {})
        ray.shutdown()
    if "nodes" in args.where.split(","):
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        try:   # SPREAD puts the two agents' single replicas on different nodes
            results += sweep(sizes, args.rows, args.in_flight, tmp, "two nodes", {})
        finally:
            ray.shutdown()
            cluster.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps({"bench": "offload_crossover", "machine": machine_info(),
                                               "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                                               "results": results}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
