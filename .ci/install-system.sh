#!/usr/bin/env bash
# System (Debian) packages the test suite needs; the CI calls this before `pip install`.
#   bubblewrap: the jail of the python code sandbox (runtime/sandbox.py, docs/sandbox.md).
#   graphviz: `dot`, used by `mxc graph --format svg|png` (tests skip svg/png without it).
#   util-linux (prlimit, setpriv) is Essential on Debian and always present.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PKGS=(
  bubblewrap
  graphviz
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
