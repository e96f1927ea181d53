#!/usr/bin/env bash
# The demo: set up, then train a reward model from SmolLM2-135M-Instruct on the shipped OpenAssistant rankings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
rankrm train --config configs/demo.yaml "$@"
