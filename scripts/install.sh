#!/usr/bin/env bash
# Installs shiftlab into ./.venv from scratch (idempotent): the package with its test extra,
# and Debian's Chromium + ChromeDriver for the MLflow UI browser test.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The regular torch build (with CUDA libraries) from the registry: torchvision, which timm
# needs, only works with it; it runs on CPU where there is no GPU.
.venv/bin/python -m pip install --quiet -e '.[test]'

if [ "${SHIFTLAB_SKIP_BROWSER:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = "0" ] || SUDO="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "install.sh: no apt-get; install Chromium + ChromeDriver for the browser test" >&2
  fi
fi
echo "shiftlab installed in $(pwd)/.venv"
