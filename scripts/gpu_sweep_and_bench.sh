#!/usr/bin/env bash
# Run on a CUDA machine: the full DDPM-vs-DDIM sweep of the shipped model (README tables) and the
# sampling benchmark. Usage: bash scripts/gpu_sweep_and_bench.sh IDX_DIR OUT_DIR
set -uo pipefail
IDX=${1:?IDX dir}; OUT=${2:?out dir}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 420 python3 inference_comparison.py --compare --raw-dir "$IDX" --num_samples 1000 --batch_size 1000 \
  --results_folder /tmp/cmp --device cuda 2>&1 | tr '\r' '\n' | grep -vE "it/s\]|s/it\]|config/s|config\]" | tail -30
tar czf "$OUT/comparison_gpu.tgz" -C /tmp/cmp/inference_pretrained comparison
timeout 150 python3 benchmarks/bench_sampling.py --device cuda --out "$OUT" 2>&1 | tail -40
