"""Which requirements of the carried distributions are unmet in this environment (PYTHONPATH and the
image): MISSING and VERSION-MISMATCH lines; informational (the bundles install with --no-deps)."""
import importlib.metadata as md
import sys

from packaging.requirements import Requirement

WANT = {"vllm": [""], "ray": ["", "serve", "default"], "matrixlang": [""], "langgraph": [""], "openai": [""],
        "gguf": [""]}
bad = 0
for dist, extras in WANT.items():
    try:
        reqs = [Requirement(r) for r in (md.requires(dist) or [])]
        ver = md.version(dist)
    except md.PackageNotFoundError:
        print(f"ABSENT            {dist}")
        bad += 1
        continue
    n = 0
    for r in reqs:
        if r.marker and not any(r.marker.evaluate({"extra": e}) for e in extras):
            continue
        n += 1
        try:
            v = md.version(r.name)
        except md.PackageNotFoundError:
            print(f"MISSING           {dist}: {r}")
            bad += 1
            continue
        if r.specifier and not r.specifier.contains(v, prereleases=True):
            print(f"VERSION-MISMATCH  {dist}: {r}  (found {v})")
            bad += 1
    print(f"{dist} {ver}: {n} requirements checked")
print(f"{bad} unmet")
sys.exit(0)
