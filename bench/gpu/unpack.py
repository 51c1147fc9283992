"""On the H200 machine: from the payload parts gathered so far in --parts (payload.partK, manifest.json),
write every component whose bytes are all there into --dest, checking its sha256; components already
written are skipped. Prints one line per component: complete, written, or waiting (parts missing)."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="/tmp/parts")
    ap.add_argument("--dest", default="/tmp/payload")
    a = ap.parse_args()
    parts, dest = Path(a.parts), Path(a.dest)
    dest.mkdir(parents=True, exist_ok=True)
    m = json.loads((parts / "manifest.json").read_text())
    P = m["part_bytes"]
    have = {k for k in range(m["parts"]) if (parts / f"payload.part{k}").is_file()
            and (parts / f"payload.part{k}").stat().st_size == min(P, m["total"] - k * P)}
    bad = 1
    for c in m["components"]:
        out = dest / c["name"]
        if (dest / (c["name"] + ".ok")).is_file():
            print(f"complete  {c['name']}")
            continue
        first, last = c["offset"] // P, (c["offset"] + c["size"] - 1) // P
        missing = [k for k in range(first, last + 1) if k not in have]
        if missing:
            print(f"waiting   {c['name']} (parts {missing} missing)")
            continue
        h = hashlib.sha256()
        with open(out, "wb") as f:
            pos, end = c["offset"], c["offset"] + c["size"]
            while pos < end:
                k = pos // P
                with open(parts / f"payload.part{k}", "rb") as src:
                    src.seek(pos - k * P)
                    n = min(end, (k + 1) * P) - pos
                    while n:
                        b = src.read(min(n, 8 << 20))
                        f.write(b)
                        h.update(b)
                        n -= len(b)
                        pos += len(b)
        if h.hexdigest() != c["sha256"]:
            print(f"CORRUPT   {c['name']}")
            os.remove(out)
            bad = 2
            continue
        (dest / (c["name"] + ".ok")).touch()
        print(f"written   {c['name']} ({c['size'] / 2**20:.1f} MiB)")
    return 0 if bad == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
