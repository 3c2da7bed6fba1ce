#!/usr/bin/env bash
# One GPU benchmark for issue 16, sized to finish within 8 minutes on one H200.
#
#   bash benchmarks/gpu.sh            # random GPT-2 ~125M and Llama ~1B in bf16 on the GPU, a ~2 GB merge
#   bash benchmarks/gpu.sh --tiny     # the same script at tiny sizes on a CPU (no GPU needed)
#
# For each model it runs benchmarks/train_step.py with two variants taking turns step by step:
# `baseline` (transformers' generate, the trainer's update before issue 16) and `kwarp` (the compiled
# decode loop: static KV cache + torch.compile; on --tiny the uncompiled loop, what auto picks on a
# CPU). Printed per variant: ms per step split by phase (generate, score, reference, train, ema),
# generated tokens/s of the generation phase (plain generate vs the fast path), the policy update's
# model FLOP utilisation (MFU, against the GPU's dense bf16 peak), peak GPU memory. Then
# benchmarks/merge.py: the SLERP merge of M = 2 members of a ~2 GB bf16 checkpoint, in GB/s.
# Environment: PY (default .venv/bin/python), OUT (a folder to keep the logs in; default: none).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TINY=0
[[ "${1:-}" == "--tiny" ]] && TINY=1

if [[ $TINY == 1 ]]; then
  DEVICE=cpu; DTYPE=float32; GENERATION=auto; VOCAB=1000
  MODELS=("gpt2 1e6" "llama 1e6"); BATCH=4; SAMPLES=2; NEW=16; STEPS=2; MERGE_GB=0.05
  THREADS=(--threads 1)
else
  DEVICE=cuda; DTYPE=bfloat16; GENERATION=compiled; VOCAB=32000
  MODELS=("gpt2 125e6" "llama 1e9"); BATCH=16; SAMPLES=4; NEW=128; STEPS=3; MERGE_GB=2
  THREADS=()
fi

log() { if [[ -n "${OUT:-}" ]]; then mkdir -p "$OUT"; tee -a "$OUT/gpu-bench.log"; else cat; fi; }

echo "kwarp GPU benchmark ($([[ $TINY == 1 ]] && echo "tiny sizes on a CPU" || echo "full sizes")), $(date -u +%FT%TZ)" | log
if [[ $DEVICE == cuda ]]; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | log; fi
for model in "${MODELS[@]}"; do
  read -r arch params <<<"$model"
  echo "== train step: random $arch ~$params parameters, $DTYPE, generation $GENERATION" | log
  "$PY" -P benchmarks/train_step.py --random-model-params "$params" --arch "$arch" --vocab "$VOCAB" \
    --device "$DEVICE" --dtype "$DTYPE" --batch "$BATCH" --samples "$SAMPLES" --max-new-tokens "$NEW" \
    --steps "$STEPS" --generation "$GENERATION" --variants baseline,kwarp "${THREADS[@]}" 2>&1 \
    | grep -v -e "Loading weights" -e "Writing model shards" | log
done
echo "== merge: M = 2 members of a ~$MERGE_GB GB bf16 checkpoint" | log
"$PY" -P benchmarks/merge.py --size-gb "$MERGE_GB" --members 2 2>&1 | log
