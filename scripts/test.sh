#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_browser.sh  # chromium for the web chat tests (skipped where it cannot be installed)
exec .venv/bin/python -m pytest -q "$@"
