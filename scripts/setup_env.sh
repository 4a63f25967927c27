#!/usr/bin/env bash
# Create ./.venv (once) and install the project into it (editable, with the test extra): `import ddpm_mnist` then
# works from any folder, and the shipped models come with the package (ddpm_mnist/pretrained/).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
