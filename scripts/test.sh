#!/usr/bin/env bash
# The tests: set up, then run the whole suite (tiny models built offline; no hub, no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
