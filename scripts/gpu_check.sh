#!/usr/bin/env bash
# For the day a GPU machine is lent: the OpenAI-client tests on `--backend vllm` and the vLLM engine
# benchmark, in at most 5 minutes. Needs a CUDA GPU and vLLM in the Python it runs (PYTHON, default python3):
#   python -m venv v && v/bin/pip install vllm && v/bin/pip install -e '.[test]' && PYTHON=v/bin/python scripts/gpu_check.sh
# Writes its figures to ${OUT:-/tmp/mosslm-gpu-check}/.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/mosslm-gpu-check}
mkdir -p "$OUT"
if ! "$PY" -c "import torch, vllm; assert torch.cuda.is_available(), 'no CUDA GPU'" 2>"$OUT/probe.txt"; then
  echo "gpu_check: needs a CUDA GPU and vLLM in $PY: $(tail -1 "$OUT/probe.txt")" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
rc=0
MOSSLM_TEST_BACKEND=vllm timeout 200 "$PY" -m pytest -q -x tests/test_openai_client.py 2>&1 | tee "$OUT/openai_client.txt" | tail -5
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
timeout 90 "$PY" benchmarks/vllm_engine.py --out "$OUT/bench" 2>"$OUT/bench.err" | tee "$OUT/vllm_engine.json"
[ "${PIPESTATUS[0]}" = 0 ] || { rc=1; tail -5 "$OUT/bench.err" >&2; }
echo "gpu_check: rc=$rc (figures in $OUT)"
exit $rc
