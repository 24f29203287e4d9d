#!/usr/bin/env bash
# The main job: set up, build the project's own model if there is none yet
# (`moss speedrun`, 10-13 minutes on 2 CPU cores, AVX-512 or AVX2), then open the chat.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! .venv/bin/python -c 'from mosslm.paths import default_model_dir; import sys; sys.exit(not (default_model_dir() / "config.json").exists())'; then
  .venv/bin/moss speedrun --out runs/speedrun
fi
exec .venv/bin/moss chat "$@"
