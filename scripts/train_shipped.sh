#!/usr/bin/env bash
# Train the shipped model one segment at a time, continuing from the weights committed in ddpm_mnist/pretrained/, on any
# machine (a fresh clone included), then export it and rescore the training curve.
#
#   bash scripts/train_shipped.sh --minutes 140                 # background; log in runs/shipped/segment-K.log
#   bash scripts/train_shipped.sh --minutes 140 --from_scratch  # segment 1 of a new recipe (new architecture)
#   bash scripts/train_shipped.sh --minutes 140 --conditional     # the class-conditional model, the same way
#   FOREGROUND=1 bash scripts/train_shipped.sh --minutes 5
#
# Segment K continues ddpm_mnist/pretrained/ddpm_mnist_small.safetensors (train_ddpm_mnist.py --init_from: fresh optimiser,
# learning-rate warm-up, the EMA counting on) for M minutes of training with --preset shipped, into
# runs/shipped/segment-K/ (killed midway, the same command resumes it). It then exports the last milestone to
# ddpm_mnist/pretrained/ (refused if it scores worse than the model there, same command; FORCE=1 overrides) and scores the
# segment's milestones into assets/training_curve.* (every 4th and the last, about a minute each on 2 cores;
# CURVE_MILESTONES=all scores all; earlier segments' rows kept). Commit ddpm_mnist/pretrained/ and assets/.
# Training stops at M minutes or when all segments together have seen TARGET_IMAGES (default 1,800,000: 30
# epochs; rounded up to the next milestone), whichever comes first. MNIST comes from RAW_DIR (default ../shared/data/mnist-full when it exists) or
# is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="" FROM_SCRATCH="" CONDITIONAL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) [ $# -ge 2 ] || { echo "error: --minutes needs a value: the minutes of training of this segment" >&2; exit 2; }
               MINUTES="$2"; shift 2 ;;
    --from_scratch) FROM_SCRATCH=1; shift ;;
    --conditional) CONDITIONAL=1; shift ;;
    *) echo "error: unknown argument $1; use --minutes M [--from_scratch] [--conditional]" >&2; exit 2 ;;
  esac
done
[[ "$MINUTES" =~ ^[0-9]+([.][0-9]+)?$ ]] && awk "BEGIN { exit !($MINUTES > 0) }" || {
  echo "error: give --minutes M, the minutes of training of this segment, a number > 0 (at most 150 in a 3-hour session)" >&2
  exit 2; }
SHIPPED=ddpm_mnist/pretrained/ddpm_mnist_small KIND=shipped MODEL_FLAGS=()
if [ -n "$CONDITIONAL" ]; then  # the class-conditional model: same recipe, trained on the labels (docs/conditional.md)
  SHIPPED=ddpm_mnist/pretrained/ddpm_mnist_conditional KIND=shipped_conditional MODEL_FLAGS=(--conditional)
fi
DATA=${DATA:-data/mnist_full_train}
[ -z "${RAW_DIR+x}" ] && [ -d ../shared/data/mnist-full ] && RAW_DIR=../shared/data/mnist-full
if [ -z "${PY:-}" ]; then  # PY=python3 uses an environment that is already set up (e.g. a GPU machine)
  [ -x .venv/bin/python ] || bash scripts/setup_env.sh
  PY=.venv/bin/python
fi
TARGET_IMAGES=${TARGET_IMAGES:-1800000}  # 30 epochs of the 60,000 digits, over all segments
if [ -n "$FROM_SCRATCH" ]; then
  SEGMENT=1 INIT=() SEEN=0
else
  [ -f "$SHIPPED.json" ] || { echo "error: $SHIPPED.safetensors does not exist yet; start its first segment with --from_scratch" >&2; exit 2; }
  read -r SEGMENT SEEN < <($PY -c "import json, sys; p = json.load(open(sys.argv[1])).get('provenance') or {}; segs = p.get('segments') or [p]; print(len(segs) + 1, sum(s.get('images_seen') or 0 for s in segs))" "$SHIPPED.json")
  INIT=(--init_from "$SHIPPED.safetensors")
fi
read -r BATCH EVERY < <($PY -c "from ddpm_mnist.settings import PRESETS; t = PRESETS['shipped']['training']; print(t['train_batch_size'] * t['gradient_accumulate_every'], t['save_and_sample_every'])")
STEPS=$(( (TARGET_IMAGES - SEEN + BATCH - 1) / BATCH ))
STEPS=$(( (STEPS + EVERY - 1) / EVERY * EVERY ))  # up to a whole milestone: steps after the last one are not saved
if [ "$STEPS" -le 0 ]; then
  echo "the shipped model has seen $SEEN images, TARGET_IMAGES=$TARGET_IMAGES reached; raise TARGET_IMAGES to train on"; exit 0
fi
RUN=${RUN:-runs/$KIND/segment-$SEGMENT}
LOG=${LOG:-$RUN.log}
if [ -z "${FOREGROUND:-}" ]; then
  mkdir -p "$(dirname "$LOG")"
  FOREGROUND=1 RUN="$RUN" nohup bash "$0" --minutes "$MINUTES" ${FROM_SCRATCH:+--from_scratch} \
    ${CONDITIONAL:+--conditional} >> "$LOG" 2>&1 &
  echo "segment $SEGMENT training in the background (pid $!); follow it with: tail -f $LOG"
  exit 0
fi
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=60
echo "== $(date -u +%FT%TZ) data"
$PY get_mnist_data.py ${RAW_DIR:+--raw_dir "$RAW_DIR"} --output "$DATA"
$PY - "$DATA" <<'PYCHECK'
import json, sys
n = json.load(open(f'{sys.argv[1]}/dataset.json'))['num_images']
sys.exit(0 if n == 60000 else f'error: {sys.argv[1]} holds {n} images, not the 60,000 training digits; '
                              'delete it and rerun, with RAW_DIR pointing at the full MNIST')
PYCHECK
echo "== $(date -u +%FT%TZ) segment $SEGMENT: $MINUTES minutes of training into $RUN"
$PY train_ddpm_mnist.py --preset shipped --data_folder "$DATA" --results_folder "$RUN" --seed "$SEGMENT" \
  --train_num_steps "$STEPS" --max_minutes "$MINUTES" --resume auto "${INIT[@]}" "${MODEL_FLAGS[@]}"
last=$(ls "$RUN" | sed -n 's/^model-\([0-9]*\)\.pt$/\1/p' | sort -n | tail -1)
echo "== $(date -u +%FT%TZ) export milestone $last (compared with the current $SHIPPED first)"
$PY -m ddpm_mnist.cli.export "$RUN/model-$last.pt" "$SHIPPED" ${RAW_DIR:+--raw_dir "$RAW_DIR"} ${FORCE:+--force}
if [ -z "${SKIP_CURVE:-}" ]; then
  echo "== $(date -u +%FT%TZ) training curve"
  $PY scripts/training_curve.py --results_folder "$RUN" ${RAW_DIR:+--raw_dir "$RAW_DIR"} \
    --milestones "${CURVE_MILESTONES:-every:4}" --output "assets/${KIND/shipped/training_curve}"
fi
echo "== $(date -u +%FT%TZ) done: commit $SHIPPED.safetensors, $SHIPPED.json and assets/training_curve.*"
