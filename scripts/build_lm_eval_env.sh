#!/usr/bin/env bash
# lm-evaluation-harness in its own venv, for benchmarks/lm_eval_parity.py (never in the main environment:
# it pins its own datasets/evaluate stack). CPU torch comes from the same pin as the project's.
#
#   LM_EVAL_DIR   where the venv goes (default ${XDG_CACHE_HOME:-~/.cache}/mosslm/lm-eval)
#   LM_EVAL_VERSION (default 0.4.13)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${LM_EVAL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mosslm/lm-eval}
VERSION=${LM_EVAL_VERSION:-0.4.13}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ -x "$DIR/bin/lm_eval" ] && "$DIR/bin/python" -c "import transformers" 2>/dev/null; then
  echo "lm-eval already in $DIR"; exit 0
fi
[ -x "$DIR/bin/python" ] || "$PY" -m venv "$DIR"
"$DIR/bin/pip" install -q --upgrade pip
"$DIR/bin/pip" install -q "torch==2.13.0" "transformers==5.24.0" "lm-eval[api,hf]==$VERSION"
"$DIR/bin/lm_eval" --help >/dev/null
echo "lm-eval $VERSION in $DIR"
