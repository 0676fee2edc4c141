#!/usr/bin/env bash
# Install everything on a fresh Debian machine and run the default experiment.
# Usage: bash scripts/setup.sh [extra `unlearnkit run` options]
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages: the dataset, and headless Chromium (the tests open every report.html in a real browser)
PKGS=""
[ -d /usr/share/datasets/fashion-mnist ] || [ -n "${UNLEARNKIT_DATA:-}" ] || PKGS="dataset-fashion-mnist"
command -v chromium >/dev/null || PKGS="$PKGS chromium"
if [ -n "$PKGS" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $PKGS
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -c "import unlearnkit, torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
.venv/bin/unlearnkit run --task fashion-mnist-mlp --forget random:100 --out runs/demo --overwrite "$@"
