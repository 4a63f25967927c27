#!/usr/bin/env bash
# Quick start: install into ./.venv, then sample the shipped model with DDPM and DDIM and run the quick
# sampler comparison (DDIM at 10 and 50 steps, DPM-Solver++ and UniPC at 10, N = 300 from the same x_T, with
# intervals and the paired DDIM-10 against DDIM-50 difference). A few minutes on a 2-core CPU; no GPU, no training.
# No MNIST on disk and no internet? The metrics then use the test-split statistics shipped in ddpm_mnist/pretrained/
# (FID, IS, confidence, class balance; precision/recall and near-copies need the digits and are skipped).
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
