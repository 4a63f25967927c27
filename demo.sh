#!/usr/bin/env bash
# Quick start: install into ./.venv, then sample the shipped model with DDPM and DDIM and run the quick
# DDPM-vs-DDIM comparison. About 4 minutes on a 2-core CPU; no GPU, no internet, no training needed.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
. .venv/bin/activate
raw=()
if [ -d ../shared/data/mnist-full ]; then raw=(--raw_dir ../shared/data/mnist-full)   # offline MNIST for the metrics
elif [ -d ../shared/data/mnist ]; then raw=(--raw_dir ../shared/data/mnist); fi
python inference_comparison.py --strategy ddpm --num_samples 16 --batch_size 16
python inference_comparison.py --strategy ddim --sample_steps 50 --num_samples 16 --batch_size 16
python inference_comparison.py --quick "${raw[@]}"
