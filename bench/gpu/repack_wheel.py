"""Repack a wheel, stored (uncompressed: xz packs the bundle far better) and without the members that
match --drop patterns; RECORD is rewritten to match.
usage: repack_wheel.py IN.whl OUT_DIR [--drop REGEX ...]"""
import argparse
import base64
import csv
import hashlib
import io
import os
import re
import zipfile

ap = argparse.ArgumentParser()
ap.add_argument("src")
ap.add_argument("outdir")
ap.add_argument("--drop", nargs="*", default=[])
a = ap.parse_args()
zin = zipfile.ZipFile(a.src)
os.makedirs(a.outdir, exist_ok=True)
out = os.path.join(a.outdir, os.path.basename(a.src))
rec = [n for n in zin.namelist() if n.endswith(".dist-info/RECORD")][0]
rows, removed = [], 0
with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
    for i in zin.infolist():
        if i.filename == rec:
            continue
        if any(re.search(p, i.filename) for p in a.drop):
            removed += i.file_size
            continue
        data = zin.read(i.filename)
        zi = zipfile.ZipInfo(i.filename, date_time=i.date_time)
        zi.external_attr = i.external_attr
        zout.writestr(zi, data, compress_type=zipfile.ZIP_STORED)
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append((i.filename, "sha256=" + h, str(len(data))))
    rows.append((rec, "", ""))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    zi = zipfile.ZipInfo(rec, date_time=(2026, 1, 1, 0, 0, 0))
    zi.external_attr = 0o644 << 16
    zout.writestr(zi, buf.getvalue(), compress_type=zipfile.ZIP_STORED)
print(os.path.basename(out), os.path.getsize(out), "removed %.1f MiB" % (removed / 2**20))
