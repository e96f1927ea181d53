#!/usr/bin/env bash
# One short GPU run (about 8 minutes on one H100/H200 for stages 1-4; stage 5 adds ~6, estimated), random weights
# in a real backbone's shape, no download:
#   1. parity, then time: every layout (padded, packed, kv) with every attention function that runs it (sdpa with
#      the layout's mask; rankrm_varlen, the segment-aware one) against the padded SDPA layout in fp32; the script
#      stops before timing if any differs by more than its stated bf16 tolerance (benchmarks/attention.py)
#   2. which SDPA kernel runs with rankrm's 4D masks (packed, kv), forced backends, and FlexAttention block masks
#   3. training throughput for every layout at the Qwen2.5-1.5B shape in bf16, against TRL's pairwise C(K,2)
#      expansion where trl is installed (pip install trl-*.whl; otherwise rankrm's layouts only), with peak memory,
#      with sdpa and again with rankrm_varlen
#   4. model FLOP/s of a bf16 training step against the measured bf16 matmul peak
#   5. sharding (benchmarks/sharding_gpu.py): where there are 2 or more GPUs, FSDP2 full shard and DeepSpeed ZeRO-3
#      (accelerate launch with the shipped recipes, nccl, 2 processes) train 3 steps of a small real shape
#      (Qwen2.5-0.5B's, 4 layers) against 1 process, in fp32 and bf16, within stated tolerances (the run stops
#      past them); on any GPU, each recipe's measured per-GPU peak memory at 1 process for $SHAPE, next to the
#      formula's predicted figure at N = 1, 2, 8 (DeepSpeed's recipes are skipped, and said so, without deepspeed)
# Results under $OUT (default benchmarks/results/gpu). On a CPU, SHAPE=tiny checks the scripts' logic only (fp32,
# the varlen function through its exact SDPA emulation; about 19 minutes on a busy 2-core CPU, 7 in stage 4, 7 in 5):
#   SHAPE=tiny bash benchmarks/gpu.sh
# STAGES="attention probe throughput utilization sharding" (the default) picks the stages; tests/test_gpu_script.py
#   runs SHAPE=tiny STAGES=attention bash benchmarks/gpu.sh
# The sharding stage on a CPU (2 gloo processes for the parity, 1 per recipe for the memory; 411 s on a
#   busy 2-core CPU, run by hand: not in the tests): SHAPE=tiny STAGES=sharding bash benchmarks/gpu.sh
# NOT RUN ON A GPU YET: no GPU was lent to issues 12, 21 and 22; the logic was checked on a CPU with SHAPE=tiny.
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPE=${SHAPE:-Qwen2.5-1.5B}
OUT=${OUT:-benchmarks/results/gpu}
MODEL=${MODEL_DIR:-/tmp/rankrm-gpu-model-$SHAPE}
PY=${PYTHON:-python}
STAGES=${STAGES:-attention probe throughput utilization sharding}
stage() { [[ " $STAGES " == *" $1 "* ]]; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
if [ "$SHAPE" = tiny ]; then
  P=12; C=6; STEPS=2; KS="4"; NG=2; FACTORS="2"; TRL=--no-trl; REPS=1
else
  P=512; C=128; STEPS=4; KS="4 9"; NG=4; FACTORS="1 4"; TRL=--no-trl; REPS=3
  $PY -c "import trl" 2>/dev/null && TRL=""
fi
$PY - <<'PY' | tee "$OUT/env.txt"
import importlib.metadata as md, torch, transformers, accelerate
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"
print("torch", torch.__version__, "transformers", transformers.__version__, "accelerate", accelerate.__version__)
print("cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "flash-attn", version("flash-attn"))
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
PY
[ -f "$MODEL/config.json" ] || $PY -m benchmarks.gpu_model --shape "$SHAPE" --out "$MODEL"
if stage attention; then  # parity first: a layout or attention function that differs stops the run here
  $PY -m benchmarks.attention --model "$MODEL" --ks $KS --prompt $P --completion $C --groups $NG --reps $REPS --out "$OUT" \
    2>&1 | grep -v '^Loading weights' | tail -20 || { echo "attention parity failed: see $OUT/attention.md" >&2; exit 1; }
fi
if stage probe; then
  $PY -m benchmarks.sdpa_probe --model "$MODEL" --k 4 --prompt $P --completion $C --groups $NG --out "$OUT" \
    2>&1 | tail -12
fi
if stage throughput; then
  for ATTN in sdpa rankrm_varlen; do
    [ "$ATTN" = sdpa ] && T=$TRL || T=--no-trl
    $PY -m benchmarks.throughput --model "$MODEL" --layers 0 --bf16 $T --ks $KS --prompt-factors $FACTORS \
      --completion-tokens $C --steps $STEPS --attn-implementation $ATTN --out "$OUT" --name "throughput_$ATTN" \
      2>&1 | tail -20
  done
fi
if stage utilization; then
  $PY -m benchmarks.utilization --model "$MODEL" --k 4 --tokens $((P + C)) --groups $NG --steps 1 --bf16-steps 3 \
    --out "$OUT" 2>&1 | tail -8
fi
if stage sharding; then  # parity on 2+ GPUs (on a CPU: gloo); per-recipe memory of $SHAPE at 1 process
  PMODEL=$MODEL
  if [ "$SHAPE" != tiny ]; then
    PMODEL=${MODEL_DIR:-/tmp/rankrm-gpu-model}-parity-Qwen2.5-0.5B-4
    [ -f "$PMODEL/config.json" ] || $PY -m benchmarks.gpu_model --shape Qwen2.5-0.5B --layers 4 --out "$PMODEL"
  fi
  $PY -m benchmarks.sharding_gpu --parity-model "$PMODEL" --memory-model "$MODEL" --out "$OUT" \
    --dtypes ${SHARDING_DTYPES:-fp32 bf16} 2>&1 | grep -v '^Loading weights' | tail -30
fi
ls -l "$OUT"
