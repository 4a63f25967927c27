#!/usr/bin/env bash
# The recipe study of docs/training.md: each candidate trained from scratch on the 60,000 digits for the same wall
# time (MINUTES, default 20, compiling included), then its last milestone scored like the training curve (DDIM-50
# at eta 0 and at eta 1, N = 500, seed 0). Run it alone: two jobs on 2 cores slow each other unevenly.
#
#   bash scripts/recipe_study.sh                  # every candidate not yet done (finished ones are skipped)
#   bash scripts/recipe_study.sh lean lean_x0     # only these
#   python3 scripts/recipe_table.py               # the table, from runs/recipe/*
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-20}
OUT=${OUT:-runs/recipe}
DATA=${DATA:-data/mnist_full_train}
RAW_DIR=${RAW_DIR:-../shared/data/mnist-full}
PY=${PY:-.venv/bin/python}
# The study's base is the recipe it started from (the 32 px shipped model before it: the small preset at lr 3e-4),
# spelled out so that a later change of the shipped preset (now the study's winner) leaves the study repeatable.
BASE="--preset small --train_lr 3e-4"
LEAN="--image_size 28 --attention lowest"
LEAN32="$LEAN --train_batch_size 32 --train_lr 2.1e-4"  # the first study's winner; the second stage varies it
declare -A FLAGS=(
  [default]=""                                          # the recipe before the study: 32 px, library attention
  [28px]="--image_size 28"
  [lowest_attention]="--attention lowest"
  [lean]="$LEAN"
  [lean_x0]="$LEAN --objective pred_x0"
  [lean_eps]="$LEAN --objective pred_noise"
  [lean_dim48]="$LEAN --unet_dim 48"
  [lean_b32]="$LEAN --train_batch_size 32 --train_lr 2.1e-4"      # lr scaled with the square root of the batch
  [lean_b128]="$LEAN --train_batch_size 128 --train_lr 4.2e-4"
  [lean_minsnr]="$LEAN --min_snr_gamma 5"
  [lean_cosine]="$LEAN --lr_warmup_steps 200 --lr_schedule cosine"  # decays to 0 at lean's step count
  [lean_b32_phema]="$LEAN32 --post_hoc_ema_every 250"   # second-stage reference; PostHocEMA chooses the EMA length
  [lean_b32_minsnr]="$LEAN32 --min_snr_gamma 5"
  [lean_b32_cosine]="$LEAN32 --lr_warmup_steps 200 --lr_schedule cosine"  # decays to 0 at the reference's steps
  [lean_b32_eps]="$LEAN32 --objective pred_noise"
  [lean_b32_dim48]="$LEAN32 --unet_dim 48"
)
# The run whose step count in MINUTES a cosine schedule decays over.
declare -A COSINE_BASE=([lean_cosine]=lean [lean_b32_cosine]=lean_b32_phema)
ORDER=(default lean lean_x0 lean_b32 lean_dim48 lean_minsnr lean_cosine lean_b128 lean_eps)
[ $# -gt 0 ] && ORDER=("$@")
for name in "${ORDER[@]}"; do  # every argument checked before anything runs
  [ -n "${FLAGS[$name]+x}" ] || { echo "error: unknown candidate $name; choose from ${!FLAGS[*]}" >&2; exit 2; }
done
[[ "$MINUTES" =~ ^[0-9]+([.][0-9]+)?$ ]] && awk -v m="$MINUTES" 'BEGIN { exit !(m > 0) }' || {
  echo "error: MINUTES=$MINUTES; use a number of minutes > 0" >&2; exit 2; }
[ -f "$DATA/dataset.json" ] || $PY get_mnist_data.py --raw_dir "$RAW_DIR" --output "$DATA"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=60
for name in "${ORDER[@]}"; do
  [ -n "${FLAGS[$name]+x}" ] || { echo "error: unknown candidate $name; choose from ${!FLAGS[*]}" >&2; exit 2; }
  run="$OUT/$name"
  if [ -f "$run/done" ]; then echo "== $name: done already"; continue; fi
  rm -rf "$run" "$run-score".*  # a candidate killed midway starts over: a resumed one would get more wall time
  steps=1000000
  if [ -n "${COSINE_BASE[$name]+x}" ]; then  # the cosine has to end when the time does: its base's steps in MINUTES
    base=${COSINE_BASE[$name]}
    steps=$(ls "$OUT/$base" 2>/dev/null | sed -n 's/^model-\([0-9]*\)\.pt$/\1/p' | sort -n | tail -1)
    [ -n "$steps" ] || { echo "error: run $base first ($name decays over its step count)" >&2; exit 2; }
    steps=$((steps * 100))
  fi
  echo "== $(date -u +%FT%TZ) $name: ${FLAGS[$name]:-(the recipe before the study)}, $MINUTES min"
  # shellcheck disable=SC2086
  $PY train_ddpm_mnist.py $BASE --data_folder "$DATA" --results_folder "$run" --seed 0 \
    --train_num_steps $steps --save_and_sample_every 100 --num_samples 4 --sampling_timesteps 10 --max_minutes "$MINUTES" ${FLAGS[$name]}
  $PY scripts/training_curve.py --results_folder "$run" --raw_dir "$RAW_DIR" --milestones last --output "$run-score"
  touch "$run/done"
done
echo "== $(date -u +%FT%TZ) study done; table: $PY scripts/recipe_table.py"
