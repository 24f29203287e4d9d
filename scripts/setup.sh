#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install mosslm with its test extra.
# torch is installed first and pinned, so pip never swaps in another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY=$candidate; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python >= 3.11 is required" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# Constrained JSON decoding (response_format): xgrammar without its triton dependency, a 1 GB GPU
# kernel compiler that xgrammar does not use on a CPU. `pip install 'mosslm[constrained]'` takes all of it.
.venv/bin/python -c 'import xgrammar' 2>/dev/null || {
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "xgrammar>=0.2.9"
  .venv/bin/python -m pip install -q --disable-pip-version-check "apache-tvm-ffi>=0.1.11"
}
echo "setup: ready (.venv/bin/moss)" >&2
