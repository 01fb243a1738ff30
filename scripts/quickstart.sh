#!/usr/bin/env bash
# The README's first command: set up a ComfyUI host with this pack and run the main job, the
# single-subject DreamO workflow, headless. Offline default: tiny random-weight models and tiny
# DreamO files in the official formats, so it runs anywhere and writes a PNG to out/.
#   bash scripts/quickstart.sh                     # offline, tiny models
#   bash scripts/quickstart.sh --real-weights      # fetches the workflow's weights (internet, HF login), runs on the GPU
#   WORKFLOW=workflows/api/dreamo_multi_reference.json bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REAL=0
for arg in "$@"; do
  case "$arg" in
    --real-weights) REAL=1 ;;
    *) echo "unknown option $arg (use --real-weights)"; exit 2 ;;
  esac
done
WORKFLOW="${WORKFLOW:-workflows/api/dreamo_ip.json}"
HOST="$(bash scripts/setup_host.sh --require | tail -n 1)"
PY="$HOST/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
if [ "$REAL" = 1 ]; then
  # The files this workflow names (scripts/weights_table.py), straight into the host's models folder.
  "$PY" scripts/fetch_weights.py --models "$HOST/models" --workflow "$(basename "$WORKFLOW" .json)"
  # ComfyUI's own device choice (the GPU when there is one), up to an hour, the server's progress echoed.
  "$PY" scripts/headless.py run "$WORKFLOW" --comfyui "$HOST" --out out
else
  "$PY" scripts/headless.py run "$WORKFLOW" --comfyui "$HOST" --out out --tiny
fi
echo "images written to $(pwd)/out"
