#!/usr/bin/env bash
# Run on a CUDA machine with one short lease: train and export the shipped model (train_shipped.sh, which puts
# it in ddpm_mnist/pretrained/), then start the full N = 1000 sweep of it in the background (setsid, so it outlives this
# command) and wait for it until DEADLINE seconds. Whatever the sweep finished is tarred into OUT_DIR; if it is
# still running, a second call collects it: `bash scripts/gpu_ship_and_sweep.sh --collect OUT_DIR`.
# `--sweep-only IDX_DIR OUT_DIR` sweeps the model already in ddpm_mnist/pretrained/.
# Usage: bash scripts/gpu_ship_and_sweep.sh IDX_DIR OUT_DIR   (then see scripts/assemble_comparison.py)
set -uo pipefail
collect() {
  local out=$1
  cp /tmp/sweep.log "$out/sweep.log" 2>/dev/null
  tar czf "$out/comparison_gpu.tgz" -C /tmp/cmp/inference_pretrained comparison 2>/dev/null
  ls /tmp/cmp/inference_pretrained/comparison/cache 2>/dev/null | wc -l | xargs echo "cached configs:"
  [ -f /tmp/sweep.done ] && echo "sweep finished" || echo "sweep still running"
}
wait_for_sweep() {
  while [ ! -f /tmp/sweep.done ] && [ "$SECONDS" -lt "$1" ]; do sleep 3; done
}
if [ "${1:-}" = "--collect" ]; then
  [ -d /tmp/cmp ] || { echo "no sweep on this machine (a fresh one): rerun the sweep"; exit 3; }
  wait_for_sweep "${DEADLINE:-240}"; collect "$2"; exit 0
fi
sweep_only=; [ "${1:-}" = "--sweep-only" ] && { sweep_only=1; shift; }
IDX=${1:?IDX dir}; OUT=${2:?out dir}
if [ -z "$sweep_only" ]; then
  FOREGROUND=1 PY=python3 RAW_DIR="$IDX" SKIP_CURVE=1 LOG=/dev/null timeout "${SHIP_SECONDS:-450}" \
    bash scripts/train_shipped.sh > "$OUT/ship_train.log" 2>&1 || exit 1  # exports into ddpm_mnist/pretrained/
  cp ddpm_mnist/pretrained/ddpm_mnist_small.safetensors ddpm_mnist/pretrained/ddpm_mnist_small.json "$OUT"/
fi
rm -f /tmp/sweep.done
setsid nohup bash -c "python3 inference_comparison.py --compare --raw_dir '$IDX' --num_samples 1000 \
  --batch_size 1000 --precision bf16 --results_folder /tmp/cmp --device cuda > /tmp/sweep.log 2>&1; \
  touch /tmp/sweep.done" > /dev/null 2>&1 &
echo "sweep started at ${SECONDS}s"
wait_for_sweep "${DEADLINE:-570}"
collect "$OUT"
tr '\r' '\n' < /tmp/sweep.log | grep -vE "it/s\]|s/it\]|config/s|config\]" | tail -8
