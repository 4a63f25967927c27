#!/usr/bin/env bash
# Train the shipped model on all 60,000 MNIST training digits and export it to pretrained/.
#
#   bash scripts/train_shipped.sh            # starts in the background; log in runs/shipped60k.log
#   bash scripts/train_shipped.sh            # again after an interruption: resumes from the latest milestone
#   FOREGROUND=1 bash scripts/train_shipped.sh
#
# Same command on a CPU or a CUDA machine (the Trainer picks the device; fp16 AMP on CUDA, bf16 on a CPU with
# bf16 instructions). MNIST comes from RAW_DIR (default ../shared/data/mnist-full when it exists) or is
# downloaded. When the last milestone exists, the EMA weights are exported to pretrained/ddpm_mnist_small.*,
# and the training curve is scored (SKIP_CURVE=1 skips that).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/shipped60k}
LOG=${LOG:-$RUN.log}
DATA=${DATA:-data/mnist_full_train}
[ -z "${RAW_DIR+x}" ] && [ -d ../shared/data/mnist-full ] && RAW_DIR=../shared/data/mnist-full
if [ -z "${FOREGROUND:-}" ]; then
  mkdir -p "$(dirname "$LOG")"
  FOREGROUND=1 nohup bash "$0" "$@" >> "$LOG" 2>&1 &
  echo "training in the background (pid $!); follow it with: tail -f $LOG"
  exit 0
fi
if [ -z "${PY:-}" ]; then  # PY=python3 uses an environment that is already set up (e.g. a GPU machine)
  [ -x .venv/bin/python ] || bash scripts/setup_env.sh
  PY=.venv/bin/python
fi
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
echo "== $(date -u +%FT%TZ) data"
$PY get_mnist_data.py ${RAW_DIR:+--raw-dir "$RAW_DIR"} --output "$DATA"
$PY - "$DATA" <<'PYCHECK'
import json, sys
n = json.load(open(f'{sys.argv[1]}/dataset.json'))['num_images']
sys.exit(0 if n == 60000 else f'error: {sys.argv[1]} holds {n} images, not the 60,000 training digits; '
                              'delete it and rerun, with RAW_DIR pointing at the full MNIST')
PYCHECK
echo "== $(date -u +%FT%TZ) training (resumes from the latest milestone)"
$PY train_ddpm_mnist.py --preset shipped --data_folder "$DATA" --results_folder "$RUN" --seed 0 --resume auto
final=$($PY -c "from ddpm_mnist.settings import PRESETS as P; t = P['shipped']['training']; print(t['train_num_steps'] // t['save_and_sample_every'])")
echo "== $(date -u +%FT%TZ) export milestone $final"
$PY -m ddpm_mnist.export "$RUN/model-$final.pt" pretrained/ddpm_mnist_small
if [ -z "${SKIP_CURVE:-}" ]; then
  echo "== $(date -u +%FT%TZ) training curve"
  $PY scripts/training_curve.py --results_folder "$RUN" ${RAW_DIR:+--raw-dir "$RAW_DIR"}
fi
echo "== $(date -u +%FT%TZ) done"
