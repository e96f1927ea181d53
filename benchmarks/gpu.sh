#!/usr/bin/env bash
# One short GPU run (about 8 minutes on one H100/H200), random weights in a real backbone's shape, no download:
#   1. which SDPA kernel runs with rankrm's 4D masks (packed, kv), forced backends, and FlexAttention block masks
#   2. training throughput for every layout at the Qwen2.5-1.5B shape in bf16, against TRL's pairwise C(K,2)
#      expansion where trl is installed (pip install trl-*.whl; otherwise rankrm's layouts only), with peak memory
#   3. model FLOP/s of a bf16 training step against the measured bf16 matmul peak
# Results under $OUT (default benchmarks/results/gpu). On a CPU, SHAPE=tiny checks the scripts' logic only:
#   SHAPE=tiny bash benchmarks/gpu.sh
# NOT RUN ON A GPU YET: no GPU was lent to issue 12; the logic was checked on a CPU with SHAPE=tiny.
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPE=${SHAPE:-Qwen2.5-1.5B}
OUT=${OUT:-benchmarks/results/gpu}
MODEL=${MODEL_DIR:-/tmp/rankrm-gpu-model-$SHAPE}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
if [ "$SHAPE" = tiny ]; then P=32; C=16; STEPS=2; else P=512; C=128; STEPS=4; fi
python - <<'PY' | tee "$OUT/env.txt"
import torch, transformers, accelerate
print("torch", torch.__version__, "transformers", transformers.__version__, "accelerate", accelerate.__version__)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
PY
[ -f "$MODEL/config.json" ] || python -m benchmarks.gpu_model --shape "$SHAPE" --out "$MODEL"
python -m benchmarks.sdpa_probe --model "$MODEL" --k 4 --prompt $P --completion $C --groups 4 --out "$OUT" \
  2>&1 | tail -12
TRL=--no-trl
python -c "import trl" 2>/dev/null && TRL=""
python -m benchmarks.throughput --model "$MODEL" --layers 0 --bf16 $TRL --ks 4 9 --prompt-factors 1 4 \
  --completion-tokens $C --steps $STEPS --out "$OUT" --name throughput 2>&1 | tail -20
python -m benchmarks.utilization --model "$MODEL" --k 4 --tokens $((P + C)) --groups 4 --steps 1 --bf16-steps 3 \
  --out "$OUT" 2>&1 | tail -8
ls -l "$OUT"
