#!/usr/bin/env bash
# Build the llama.cpp peers that benchmarks/serve_load.py and benchmarks/quant.py compare against:
#   1. llama-cpp-python (with its [server] extra) in its own venv: $PEERS_DIR/venv
#   2. llama.cpp's C++ llama-server and llama-bench, built from the sources vendored in the same
#      llama-cpp-python sdist: $PEERS_DIR/bin/llama-server, $PEERS_DIR/bin/llama-bench
# Idempotent: a step whose result already exists is skipped (FORCE=1 redoes both).
#
# Environment:
#   PEERS_DIR      where everything goes (default ${XDG_CACHE_HOME:-~/.cache}/mosslm/peers)
#   PYTHON         interpreter for the peers venv (default: the one behind .venv, else python3)
#   LLAMA_CPP_PYTHON_VERSION  (default 0.3.36)
#   JOBS           parallel compile jobs (default 2)
#   FORCE=1        rebuild even if present
#
# CPU flags: a native build (-DGGML_NATIVE=ON) unless the CPU has AMX (amx_tile in
# /proc/cpuinfo), where native builds of this llama.cpp crash; there the AVX-512 family
# is switched on explicitly and the AMX kernels off.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
PEERS_DIR=${PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mosslm/peers}
JOBS=${JOBS:-2}
FORCE=${FORCE:-0}
mkdir -p "$PEERS_DIR/bin" "$PEERS_DIR/src"
PEERS_DIR=$(cd "$PEERS_DIR" && pwd)
TIMES="$PEERS_DIR/build_times.txt"

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then
    PY=$(readlink -f "$REPO/.venv/bin/python")
  else
    PY=$(command -v python3)
  fi
fi

if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
  CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  CPU_FLAGS="$CPU_FLAGS -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
  CPU_FLAGS="$CPU_FLAGS -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  echo "build_llama_peers: AMX CPU detected; non-native build with explicit AVX-512 flags" >&2
else
  CPU_FLAGS="-DGGML_NATIVE=ON"
fi
export CMAKE_BUILD_PARALLEL_LEVEL=$JOBS

log_time() { echo "$(date -u +%FT%TZ) $1 ${2}s" | tee -a "$TIMES" >&2; }

# ---- 1. llama-cpp-python[server] in its own venv -------------------------------------
VENV="$PEERS_DIR/venv"
have_lcp() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$VERSION" <<'EOF' 2>/dev/null
import sys, llama_cpp, uvicorn, fastapi, sse_starlette, pydantic_settings  # noqa: F401
import llama_cpp.server  # noqa: F401
sys.exit(llama_cpp.__version__ != sys.argv[1])
EOF
}
if [ "$FORCE" != 1 ] && have_lcp; then
  echo "build_llama_peers: llama-cpp-python $VERSION already in $VENV (skip)" >&2
else
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  t0=$(date +%s)
  CMAKE_ARGS="$CPU_FLAGS" "$VENV/bin/python" -m pip install --no-cache-dir \
    --no-binary llama-cpp-python "llama-cpp-python[server]==$VERSION"
  log_time "llama-cpp-python[server]==$VERSION pip-install" $(( $(date +%s) - t0 ))
  have_lcp || { echo "build_llama_peers: llama-cpp-python install check failed" >&2; exit 1; }
fi

# ---- 2. llama-server and llama-bench from the sdist's vendor/llama.cpp -----------------
SERVER_BIN="$PEERS_DIR/bin/llama-server"
BENCH_BIN="$PEERS_DIR/bin/llama-bench"
if [ "$FORCE" != 1 ] && [ -x "$SERVER_BIN" ] && "$SERVER_BIN" --version >/dev/null 2>&1 && [ -x "$BENCH_BIN" ]; then
  echo "build_llama_peers: $SERVER_BIN and $BENCH_BIN already built (skip)" >&2
else
  SRC="$PEERS_DIR/src/llama_cpp_python-$VERSION"
  if [ ! -d "$SRC/vendor/llama.cpp" ]; then
    "$VENV/bin/python" -m pip download -q --no-binary :all: --no-deps \
      -d "$PEERS_DIR/src" "llama-cpp-python==$VERSION"
    tar -xzf "$PEERS_DIR/src/llama_cpp_python-$VERSION.tar.gz" -C "$PEERS_DIR/src"
  fi
  BUILD="$PEERS_DIR/src/llama-server-build"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja $CPU_FLAGS \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  cmake --build "$BUILD" --target llama-server llama-bench -j "$JOBS"
  install -m 755 "$BUILD/bin/llama-server" "$SERVER_BIN"
  install -m 755 "$BUILD/bin/llama-bench" "$BENCH_BIN"
  log_time "llama-server+llama-bench(llama-cpp-python-$VERSION/vendor/llama.cpp) cmake-build" $(( $(date +%s) - t0 ))
  "$SERVER_BIN" --version >&2 || true
fi

echo "build_llama_peers: done" >&2
echo "PEERS_DIR=$PEERS_DIR"
echo "llama-cpp-python: $VENV/bin/python -m llama_cpp.server"
echo "llama-server:     $SERVER_BIN"
echo "llama-bench:      $BENCH_BIN"
