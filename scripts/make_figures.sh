#!/usr/bin/env bash
# Regenerate every README figure from the shipped model:
#   assets/ddpm_steps1000.png, assets/ddim_steps{200,50,10}_eta0.0.png (64 images each, seed 0, one batch),
#   assets/comparison.{png,md,json,csv}: the sampler sweep (every sampler of the registry), 1000 images per config,
# and, with RUN=<training results folder>, the training grids assets/sample-1.png and assets/sample-<last>.png
# copied from that run and its training curve assets/training_curve.{png,md,csv} (the shipped model's run:
# scripts/train_shipped.sh, runs/shipped/segment-K).
# The full sweep takes minutes on a GPU and many hours on a CPU: SWEEP=cpu runs a CPU-sized one (every sampler;
# DDIM S in {10, 20, 50} x eta in {0, 1}, the other solvers at 5, 10, 20 steps; N = 1000; DDPM-1000 is most of its
# time; cached in runs/figures, so an interrupted run resumes) and copies it to assets/. Either sweep then writes
# assets/targets.md (scripts/target_table.py: the shipped model against its quality targets) and assets/headline.md
# (the README's selection of the sweep's rows). SWEEP=headline runs
# the README's headline sweep: every configuration of at most 50 NFE (DDIM S in {10, 20, 50} x eta in {0, 0.5, 1},
# every other solver at 5, 10, 20, 50) at N = 10,000, DDPM-1000 on every 10th of those x_T (N = 1000), and the
# shipped student's rows at 1, 2, 4 steps when one is shipped (about two hours on a 2-core CPU). SWEEP=quick runs the
# demo's 36-image one (left in runs/figures); SWEEP=none skips it. GRIDS=no keeps the sample grids in assets/;
# EDITS=no skips the editing figure assets/editing.png (scripts/edit_figure.py: RePaint takes minutes on a CPU).
# With ddpm_mnist/pretrained/ddpm_mnist_conditional.safetensors: assets/conditional.png (100 digits, one per row, guidance
# GUIDANCE_W, default 1.25) and, with a full or cpu sweep, the guidance sweep assets/guidance.*; CONDITIONAL=no skips both.
#   bash scripts/make_figures.sh                                  # grids and the full sweep (GPU)
#   SWEEP=none RUN=runs/shipped/segment-1 bash scripts/make_figures.sh   # grids, training grids and training curve
set -euo pipefail
cd "$(dirname "$0")/.."
# every setting checked before anything runs
fail() { echo "error: $1" >&2; exit 2; }
[ $# -eq 0 ] || fail "make_figures.sh takes no arguments; its settings are SWEEP, GRIDS, EDITS, CONDITIONAL, RUN, GUIDANCE_W (see its top)"
case "${SWEEP:-full}" in full|cpu|headline|quick|none) ;; *) fail "SWEEP=$SWEEP; use full, cpu, headline, quick or none" ;; esac
for var in GRIDS EDITS CONDITIONAL; do
  case "${!var:-yes}" in yes|no) ;; *) fail "$var=${!var}; use yes or no" ;; esac
done
[[ "${GUIDANCE_W:-1.25}" =~ ^[0-9]+([.][0-9]+)?$ ]] || fail "GUIDANCE_W=$GUIDANCE_W; use a number such as 1.25"
if [ -n "${RUN:-}" ] && ! ls "$RUN"/sample-*.png >/dev/null 2>&1; then
  fail "no sample-N.png in RUN=$RUN; point RUN at a training results folder"
fi
. .venv/bin/activate
raw=()
[ -d ../shared/data/mnist-full ] && raw=(--raw_dir ../shared/data/mnist-full)  # else downloaded (torchvision)
out=runs/figures
grids=$out/inference_pretrained
if [ "${GRIDS:-yes}" != no ]; then
  for steps in 200 50 10; do
    python inference_comparison.py --strategy ddim --sample_steps $steps --num_samples 64 --batch_size 64 \
      --results_folder $out
    cp $grids/ddim/ddim_steps${steps}_eta0.0.png assets/
  done
  python inference_comparison.py --strategy ddpm --num_samples 64 --batch_size 64 --results_folder $out
  cp $grids/ddpm/ddpm_steps1000.png assets/
fi
case "${SWEEP:-full}" in
  full) python inference_comparison.py --compare "${raw[@]}" --num_samples 1000 --batch_size 1000 --precision bf16 \
          --results_folder $out  # the README's settings
        cp $grids/comparison/comparison.{png,md,json,csv} assets/
        cp $grids/comparison/grids/{unipc_steps10,dpmpp_2m_steps10,dpmpp_2m_sde_steps20}.png assets/ ;;
  cpu) python inference_comparison.py --compare "${raw[@]}" --num_samples 1000 --compare_steps 10,20,50 \
         --compare_etas 0,1 --compare_solver_steps 5,10,20 --results_folder $out
       cp $grids/comparison/comparison.{png,md,json,csv} assets/
       cp $grids/comparison/grids/{unipc_steps10,dpmpp_2m_steps10,dpmpp_2m_sde_steps20}.png assets/ ;;
  headline) student=()
       [ -f ddpm_mnist/pretrained/ddpm_mnist_small_student.safetensors ] && student=(--compare_student)
       python inference_comparison.py --compare "${raw[@]}" --num_samples 10000 --compare_ddpm_samples 1000 \
         --compare_steps 10,20,50 --compare_etas 0,0.5,1 --compare_solver_steps 5,10,20,50 "${student[@]}" \
         --results_folder $out/headline
       cp $out/headline/inference_pretrained/comparison/comparison.{png,md,json,csv} assets/ ;;
  quick) python inference_comparison.py --quick "${raw[@]}" --results_folder $out ;;
  none) ;;
  *) echo "error: SWEEP=$SWEEP; use full, cpu, headline, quick or none" >&2; exit 1 ;;
esac
case "${SWEEP:-full}" in
  full|cpu|headline) python scripts/target_table.py assets/comparison.json --output assets/targets.md \
                       --headline assets/headline.md ;;
esac
if [ "${CONDITIONAL:-yes}" != no ] && [ -f ddpm_mnist/pretrained/ddpm_mnist_conditional.safetensors ]; then
  w=${GUIDANCE_W:-1.25}  # the conditional model's grid: ten of each digit, one digit per row, guidance scale w
  grid=$(python inference_comparison.py --conditional --strategy ddim --sample_steps 50 --guidance_scale "$w" \
    --num_samples 100 --batch_size 100 --results_folder $out | sed -n 's/^saved //p')
  cp "$grid" assets/conditional.png
  case "${SWEEP:-full}" in  # accuracy, FID and IS against the guidance scale, N = 1000 per scale
    full|cpu|headline) python scripts/guidance_sweep.py "${raw[@]}" --output assets/guidance ;;
  esac
fi
if [ "${EDITS:-yes}" != no ]; then  # the editing figure: one row per operation of edit_digits.py
  python scripts/edit_figure.py "${raw[@]}" --output assets/editing.png
fi
if [ -n "${RUN:-}" ]; then
  last=$(ls "$RUN" | sed -n 's/^sample-\([0-9]*\)\.png$/\1/p' | sort -n | tail -1)
  [ -n "$last" ] || { echo "error: no sample-N.png in RUN=$RUN; point RUN at a training results folder" >&2; exit 1; }
  cp "$RUN/sample-1.png" "$RUN/sample-$last.png" assets/
  echo "copied the training grids sample-1.png and sample-$last.png from $RUN"
  python scripts/training_curve.py --results_folder "$RUN" "${raw[@]}" --output assets/training_curve
fi
