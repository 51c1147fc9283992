"""Which requirements of the carried distributions (every one installed in a PYTHONPATH folder, plus
ray's [default,serve] extras) are unmet in this environment (those folders and the image): MISSING
and VERSION-MISMATCH lines. Informational: the bundles install with --no-deps."""
import importlib.metadata as md
import os
import sys

from packaging.requirements import Requirement

EXTRAS = {"ray": ["", "serve", "default"]}
folders = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
carried = {d.metadata["Name"]: d for d in md.distributions(path=folders)}
bad = 0
for name, dist in sorted(carried.items(), key=lambda kv: kv[0].lower()):
    extras = EXTRAS.get(name.lower(), [""])
    for r in (Requirement(x) for x in (dist.requires or [])):
        if r.marker and not any(r.marker.evaluate({"extra": e}) for e in extras):
            continue
        try:
            v = md.version(r.name)
        except md.PackageNotFoundError:
            print(f"MISSING           {name}: {r}")
            bad += 1
            continue
        if r.specifier and not r.specifier.contains(v, prereleases=True):
            print(f"VERSION-MISMATCH  {name}: {r}  (found {v})")
            bad += 1
print(f"{len(carried)} carried distributions checked; {bad} unmet")
sys.exit(0)
