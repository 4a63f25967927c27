#!/usr/bin/env bash
# Regenerate the README figures from the shipped model:
#   assets/ddpm_steps1000.png, assets/ddim_steps200_eta0.0.png (64 images each, seed 0), and the
#   comparison plot and table (assets/comparison.png, assets/comparison.md).
# The full sweep (1000 images x 19 configs) takes minutes on a GPU and many hours on a CPU; pass
# SWEEP="--quick" for a CPU-sized version. The training grids assets/sample-1.png and sample-4.png come
# from the shipped training run itself (scripts/gpu_train_shipped.sh) and are copied by hand from it.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
raw=()
[ -d ../shared/data/mnist ] && raw=(--raw-dir ../shared/data/mnist)
out=runs/figures
python inference_comparison.py --strategy ddpm --num_samples 64 --batch_size 64 --results_folder $out
python inference_comparison.py --strategy ddim --sample_steps 200 --num_samples 64 --batch_size 64 --results_folder $out
cp $out/inference_pretrained/ddpm/ddpm_steps1000.png $out/inference_pretrained/ddim/ddim_steps200_eta0.0.png assets/
python inference_comparison.py --compare ${SWEEP:-} "${raw[@]}" --results_folder $out
folder=$out/inference_pretrained/$([ "${SWEEP:-}" = "--quick" ] && echo quick_comparison || echo comparison)
cp $folder/comparison.png $folder/comparison.md assets/
