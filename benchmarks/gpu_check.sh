#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): inference, a stage-2 step and fp32 against bf16 at the
# paper's size (ViT-L-14-336 at 518, random weights), on one CUDA device, in under 10 minutes.
#   bash benchmarks/gpu_check.sh [OUT.json]      (default: benchmarks/results/gpu_check.json)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu_check.json}"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
HF_HUB_OFFLINE=1 "$PYTHON" -m benchmarks.gpu_check --device cuda --batch-sizes 1 8 32 --precisions fp32 bf16 \
    --compile off on --repeats 5 --warmup 2 --n-images 300 --json "$out"
echo "wrote $out"
