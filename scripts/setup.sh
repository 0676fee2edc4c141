#!/usr/bin/env bash
# Install everything on a fresh Debian machine and run the default experiment.
# Usage: bash scripts/setup.sh [extra `unlearnkit run` options]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${UNLEARNKIT_DATA:-}" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -c "import unlearnkit, torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
.venv/bin/unlearnkit run --task fashion-mnist-mlp --forget random:100 --out runs/demo --overwrite "$@"
