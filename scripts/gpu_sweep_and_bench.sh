#!/usr/bin/env bash
# Run on a CUDA machine: the full DDPM-vs-DDIM sweep of the shipped model (README tables) and the
# sampling benchmark. Usage: bash scripts/gpu_sweep_and_bench.sh IDX_DIR OUT_DIR
set -uo pipefail
IDX=${1:?IDX dir}; OUT=${2:?out dir}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
DEADLINE=420 bash scripts/gpu_ship_and_sweep.sh --sweep-only "$IDX" "$OUT"  # the README sweep
timeout 150 python3 benchmarks/bench_sampling.py --device cuda --out "$OUT" 2>&1 | tail -40
