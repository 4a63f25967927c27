#!/usr/bin/env bash
# Create ./.venv (once) and install the project into it (editable, with the test extra): `import ddpm_mnist` then
# works from any folder, and the shipped models come with the package (ddpm_mnist/pretrained/).
#   bash scripts/setup_env.sh          torch as pip resolves it (on Linux: the CUDA build, about 5.8 GB of .venv)
#   bash scripts/setup_env.sh --cpu    the CPU-only torch build from PyTorch's own index, for a laptop without GPU
set -euo pipefail
cd "$(dirname "$0")/.."
cpu=0
for arg in "$@"; do
  case "$arg" in
    --cpu) cpu=1 ;;
    *) echo "error: unknown argument $arg; use --cpu or nothing (see the top of $0)" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [ "$cpu" = 1 ]; then  # the same versions pyproject.toml allows, built without CUDA
  "${pip[@]}" "torch>=2.6,<2.15" "torchvision>=0.21,<0.30" --index-url https://download.pytorch.org/whl/cpu
fi
"${pip[@]}" -e '.[test]'
