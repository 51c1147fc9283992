"""Input streaming: memory of reading and checking N rows does not grow with N.

Method: one input of ``--rows`` rows (default 1M) is written per format: 10 Parquet shards, a
``.jsonl.zst`` file and a saved Hugging Face dataset (when ``datasets`` is installed). For each format
and for N in (rows/10, rows), a fresh Python process (imports done) streams the first N rows through what the driver
does per row before it sends one: ``inputs.open_input(...).rows()`` and ``Engine.new_message`` (parse
and check against the input schema), then drops the message. It reports the peak resident memory
(VmHWM), the peak anonymous memory (RssAnon sampled every 10k rows: the heap, without the file
pages a memory-mapped dataset brings in, which the kernel can drop) and rows/s. The figure is the
ratio peak(N = rows) / peak(N = rows/10): 1.0 means memory does not grow with the input. A second series keeps each row's key in a dict, as the driver
does to find repeated ids (``Driver.seen``): that part grows with the input, by the bytes per row shown.

    python -m bench.input_streaming [--rows 1000000] [--out bench/results/input_streaming.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

IR_SCHEMA = {"type": "object", "properties": {"id": {"type": "string"}, "question": {"type": "string"},
                                              "choices": {"type": "array", "items": {"type": "string"}}},
             "required": ["id", "question", "choices"], "x-id-field": "id"}


def make_inputs(folder: Path, rows: int) -> dict[str, str]:
    """Write the input in each format; returns ``{format: --input spec}``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    shards = folder / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    per = rows // 10
    zst = zstandard.ZstdCompressor().stream_writer(open(folder / "in.jsonl.zst", "wb"))  # noqa: SIM115
    for k in range(10):
        part = [{"id": f"q{i}", "question": f"question {i} " + "x" * 100, "choices": ["a", "b", "c"]}
                for i in range(k * per, (k + 1) * per)]
        pq.write_table(pa.Table.from_pylist(part), shards / f"part-{k:04d}.parquet")
        zst.write("".join(json.dumps(r) + "\n" for r in part).encode())
    zst.close()
    specs = {"parquet": str(shards), "jsonl.zst": str(folder / "in.jsonl.zst")}
    try:
        import datasets
    except ImportError:
        return specs
    ds = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in shards.glob("*.parquet")),
                               split="train", cache_dir=str(folder / "hf_cache"))
    ds.save_to_disk(str(folder / "hf"))
    specs["hf"] = f"hf:{folder / 'hf'}"
    return specs


def _status_kib(key: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB: ``VmHWM`` (peak resident; unlike
    ``ru_maxrss`` it does not start from the parent's peak after fork + exec) or ``RssAnon`` (resident
    anonymous memory now: the heap, without file pages mapped from a memory-mapped dataset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def stream(spec: str, n: int, keep_keys: bool) -> dict:
    """In this process: stream ``n`` rows, check each; peak RSS and rate."""
    from matrixlang.runtime.data.inputs import open_input
    from matrixlang.runtime.semantics.engine import Engine

    from bench.programs import coral

    ir = coral()
    ir["input_schema"] = {**ir["input_schema"], **{k: IR_SCHEMA[k] for k in ("properties", "required")}}
    engine = Engine(ir, backend="sim")
    seen: dict = {}
    base = _status_kib("VmHWM")
    anon = _status_kib("RssAnon")
    t0 = time.perf_counter()
    bad = 0
    for pos, raw in open_input(spec).rows(limit=n):
        msg = engine.new_message(raw, pos, 0.0)
        bad += msg.status == "failed"
        if keep_keys:
            seen[msg.key] = pos
        if pos % 10000 == 0:
            anon = max(anon, _status_kib("RssAnon"))
    el = time.perf_counter() - t0
    anon = max(anon, _status_kib("RssAnon"))
    return {"rows": n, "bad": bad, "s": el, "rows_per_s": n / el, "peak_rss_mib": _status_kib("VmHWM") / 1024,
            "start_rss_mib": base / 1024, "peak_anon_mib": anon / 1024, "keys": len(seen)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", nargs=3, metavar=("SPEC", "N", "KEEP"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(stream(a.one[0], int(a.one[1]), a.one[2] == "1")))
        return
    results: dict = {"rows": a.rows, "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        specs = make_inputs(Path(tmp), a.rows)
        for fmt, spec in specs.items():
            series = {}
            for keep in (False, True):
                runs = []
                for n in (a.rows // 10, a.rows):
                    out = subprocess.run([sys.executable, "-m", "bench.input_streaming", "--one", spec, str(n),
                                          "1" if keep else "0"], cwd=ROOT, capture_output=True, text=True,
                                         check=True)
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                small, big = runs
                grow = big["rows"] - small["rows"]
                series["with_seen_keys" if keep else "stream_and_check"] = {
                    "runs": runs, "peak_ratio": big["peak_rss_mib"] / small["peak_rss_mib"],
                    "bytes_per_row": (big["peak_rss_mib"] - small["peak_rss_mib"]) * 2**20 / grow,
                    "anon_ratio": big["peak_anon_mib"] / small["peak_anon_mib"],
                    "anon_bytes_per_row": (big["peak_anon_mib"] - small["peak_anon_mib"]) * 2**20 / grow}
            results["formats"][fmt] = series
            print(fmt, json.dumps({k: {"peak_ratio": round(v["peak_ratio"], 3),
                                       "bytes_per_row": round(v["bytes_per_row"], 1),
                                       "anon_ratio": round(v["anon_ratio"], 3),
                                       "anon_bytes_per_row": round(v["anon_bytes_per_row"], 1),
                                       "rows_per_s": round(v["runs"][-1]["rows_per_s"])}
                                   for k, v in series.items()}), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
