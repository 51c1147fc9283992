"""Lay out what the H200 machine needs as carry folders of at most --part-mib each (a device call
carries 64 MiB with the working tree). The components (vLLM bundle, extra bundle, SmolLM2's GGUF,
each already compressed) are concatenated in that order and cut into parts of --part-mib (the last shorter), so that earlier
calls already hold whole components (bench/gpu/unpack.py installs each as soon as it is complete).
Each folder .gpu/cK/ gets: payload.partK, manifest.json (offsets, sizes, sha256), mxgpu.tar (this
branch's bench/gpu, scripts/real_model.py, workflows/: git archive of HEAD), the matrixlang wheel,
and run.sh.

    python bench/gpu/pack.py --gpu-dir /work/main/.gpu --wheel .gpu/extra/mx/matrixlang-*.whl
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu-dir", default="/work/main/.gpu")
    ap.add_argument("--vllm", default="build/vllm026-bundle.tar.xz")
    ap.add_argument("--extra", default="extra/extra-bundle.tar.xz")
    ap.add_argument("--gguf", default="model/smollm2.gguf.xz", help="'' leaves the GGUF out (llama8b alone)")
    ap.add_argument("--tokenizer", help="a tokenizer directory (bench/gpu/gguf_tokenizer.py), copied as tok/")
    ap.add_argument("--wheel", required=True, help="the matrixlang wheel")
    ap.add_argument("--part-mib", type=float, default=58.0, help="size of every part but the last")
    a = ap.parse_args()
    g = Path(a.gpu_dir)
    comps = [("vllm026-bundle.tar.xz", g / a.vllm), ("extra-bundle.tar.xz", g / a.extra),
             ("smollm2.gguf.xz", g / a.gguf)][: 3 if a.gguf else 2]
    total = sum(p.stat().st_size for _, p in comps)
    part = int(a.part_mib * 2**20)  # full parts first: the earlier calls complete whole components
    n = math.ceil(total / part)
    manifest = {"part_bytes": part, "parts": n, "total": total, "components": []}
    off = 0
    for name, p in comps:
        size = p.stat().st_size
        manifest["components"].append({"name": name, "offset": off, "size": size, "sha256": sha256(p)})
        off += size
    wheel = Path(sorted(glob.glob(a.wheel))[-1])
    tar = g / "mxgpu.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(tar), "HEAD", "bench/gpu", "scripts/real_model.py",
                    "workflows"], check=True)
    for d in g.glob("c[0-9]*"):
        shutil.rmtree(d)
    # stream the concatenation into the parts
    streams = [open(p, "rb") for _, p in comps]  # noqa: SIM115 - closed below
    cur = 0
    for k in range(n):
        d = g / f"c{k + 1}"
        d.mkdir(parents=True)
        left = part
        with open(d / f"payload.part{k}", "wb") as out:
            while left and cur < len(streams):
                b = streams[cur].read(min(left, 8 << 20))
                if not b:
                    cur += 1
                    continue
                out.write(b)
                left -= len(b)
        (d / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        shutil.copy(tar, d / "mxgpu.tar")
        shutil.copy(wheel, d / wheel.name)
        shutil.copy(HERE / "run.sh", d / "run.sh")
        if a.tokenizer and k == n - 1:
            shutil.copytree(a.tokenizer, d / "tok")
    for s in streams:
        s.close()
    sizes = {d.name: sum(f.stat().st_size for f in d.iterdir()) for d in sorted(g.glob("c[0-9]*"))}
    print(json.dumps({"total_mib": round(total / 2**20, 2), "parts": n, "part_mib": round(part / 2**20, 2),
                      "folders_mib": {k: round(v / 2**20, 2) for k, v in sizes.items()},
                      "components": [(c["name"], c["offset"], c["size"]) for c in manifest["components"]]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
