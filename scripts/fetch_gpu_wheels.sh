#!/usr/bin/env bash
# Downloads, here, the wheels bench/gpu.py needs on a bare GPU machine into .gpu-wheels/
# (git-ignored), to be taken along with the working tree and installed there offline.
#
# The GPU machine is assumed to have PyTorch, transformers (so huggingface-hub, safetensors,
# regex, requests, filelock, PyYAML), timm, numpy, Pillow and OpenCV, and no Ray, MLflow,
# pydantic or diffusers. bench/gpu.py needs only diffusers: it imports no Ray or MLflow, and
# without pydantic it builds shiftlab's editor, model and optimizer from plain stand-in
# configs. So the wheels are diffusers and the two small pure-Python packages it needs beyond
# transformers' (importlib_metadata, zipp), at the versions installed in .venv (the tested ones).
#
# Only pure-Python wheels (py3-none-any): the GPU machine's Python may differ from this one's.
# The script fails if pip offers anything else.
#
#   scripts/fetch_gpu_wheels.sh              # for Python 3.12 there (GPU_PYTHON=3.11 ...)
#   then on the GPU machine, from the repo root:
#   python3 -m pip install -q --no-index --find-links .gpu-wheels diffusers
#   PYTHONPATH=platform python3 bench/gpu.py
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${GPU_WHEELS_DIR:-.gpu-wheels}
GPU_PYTHON=${GPU_PYTHON:-3.12}
PY=.venv/bin/python
[ -x "$PY" ] || PY=${PYTHON:-python3}

# The versions installed here (pyproject pins diffusers); fall back to the newest.
pin() {
  "$PY" - "$1" <<'EOF'
import importlib.metadata as md, sys
try:
    print(f"{sys.argv[1]}=={md.version(sys.argv[1])}")
except md.PackageNotFoundError:
    print(sys.argv[1])
EOF
}
SPECS=("$(pin diffusers)" "$(pin importlib_metadata)" "$(pin zipp)")

rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version "$GPU_PYTHON" --implementation py --abi none --platform any \
  -d "$DEST" "${SPECS[@]}"

status=0
for wheel in "$DEST"/*; do
  case "$wheel" in
    *-none-any.whl) ;;
    *) echo "not a pure-Python wheel: $wheel" >&2; status=1 ;;
  esac
done
[ "$status" = 0 ] || exit "$status"

ls -l "$DEST" | awk 'NR > 1 {printf "%10d  %s\n", $5, $9}'
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "total: $total bytes ($((total / 1024)) KiB) in $DEST; tracked files: $((tree / 1024)) KiB"
