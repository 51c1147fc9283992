"""Sample the GPUs' utilisation and memory every --interval seconds into a CSV (epoch, gpu index,
utilisation %, memory used MiB) until killed; through NVML (nvidia-ml-py), else `nvidia-smi`. On a
machine without a GPU it writes nothing and exits 0. `window(csv, t0, t1)` summarises a span."""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time


def sampler():
    try:
        import pynvml
        pynvml.nvmlInit()
        hs = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

        def read():
            return [(i, pynvml.nvmlDeviceGetUtilizationRates(h).gpu, pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20)
                    for i, h in enumerate(hs)]
        read()
        return read
    except Exception:  # noqa: BLE001 - fall back on nvidia-smi
        pass
    try:
        subprocess.run(["nvidia-smi", "-L"], check=True, capture_output=True, timeout=20)
    except Exception:  # noqa: BLE001 - no GPU here
        return None

    def read_smi():
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
        return [tuple(float(x) for x in line.split(",")) for line in out.strip().splitlines()]
    return read_smi


def window(path: str, t0: float, t1: float) -> dict:
    util, mem = [], []
    try:
        with open(path) as f:
            for line in f:
                t, _, u, m = (float(x) for x in line.split(","))
                if t0 <= t <= t1:
                    util.append(u)
                    mem.append(m)
    except FileNotFoundError:
        pass
    if not util:
        return {"samples": 0}
    util_sorted = sorted(util)
    return {"samples": len(util), "util_mean": round(sum(util) / len(util), 1),
            "util_p50": util_sorted[len(util) // 2], "util_busy_frac": round(sum(u >= 50 for u in util) / len(util), 3),
            "mem_used_max_mib": round(max(mem))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--interval", type=float, default=0.5)
    a = ap.parse_args()
    read = sampler()
    if read is None:
        print("gpumon: no GPU", file=sys.stderr)
        return 0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with open(a.csv, "a", buffering=1) as f:
        while not stop:
            t = time.time()
            for i, u, m in read():
                f.write(f"{t:.3f},{int(i)},{u:.0f},{m:.0f}\n")
            time.sleep(max(0.0, a.interval - (time.time() - t)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
