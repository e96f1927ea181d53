#!/usr/bin/env bash
# The tests: set up, then run the whole suite (tiny models built offline; no hub, no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# one worker per core (pytest-xdist), each test file on one worker: a file's module fixtures (trained models, launched
# runs) are built once; RANKRM_TEST_WORKERS=0 runs in this process alone
python -m pytest -n "${RANKRM_TEST_WORKERS:-auto}" --dist loadfile "$@"
