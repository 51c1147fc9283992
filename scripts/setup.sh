#!/usr/bin/env bash
# Sets up everything the default test run needs on a fresh Debian/Ubuntu machine (Python >= 3.10):
#   system packages: bubblewrap (the jail of the python code sandbox, docs/sandbox.md) and graphviz
#     (`dot`, for `mxc graph --format svg|png`); util-linux (prlimit, setpriv) is Essential on Debian;
#   python3-pip where the interpreter has no pip;
#   the package itself, editable, with its [dev] extra (pytest, ruff, hypothesis, ...).
# The README's set-up command and .ci/run both call it. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

pkgs=(bubblewrap graphviz)
"$PY" -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
else
  echo "setup: not a Debian system: install ${pkgs[*]} with your package manager" >&2
fi

# A Debian interpreter outside a venv is "externally managed" (PEP 668): install into it anyway, as
# CI and a fresh machine's root do; inside a venv nothing changes.
extra=()
if "$PY" -c 'import sys, sysconfig, pathlib; sys.exit(sys.prefix != sys.base_prefix or not (pathlib.Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").exists())'; then
  extra+=(--break-system-packages)
fi
echo "setup: pip install -e .[dev]"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip install -q "${extra[@]}" -e ".[dev]"
echo "setup: done ($("$PY" -c 'import matrixlang; print("matrixlang", matrixlang.__version__)'))"
