#!/usr/bin/env bash
# refcustom's test command (README; .ci/run runs it).
#
# With a ComfyUI host (COMFYUI_PATH, a parent folder, or ~/ComfyUI; see tests/comfy_host.py):
#   scripts/setup_host.sh makes sure its .venv has our dependencies, then one pytest run with the host's
#   Python covers tier 1 (tests/model, tests/train: no ComfyUI) and tier 2 (tests/nodes in-process,
#   tests/server against a headless server). Only tests/nodes/conftest.py puts ComfyUI on sys.path,
#   and tests/conftest.py hides it again while tier-1 modules are imported and run.
# Without one: tier 1 only, in this repo's .venv (torch 2.13.0 CPU + requirements.txt + pytest).
# Extra arguments go to pytest. The last line printed says which tiers ran.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd -P)"
START=$(date +%s)

PY3="$(command -v python3 || command -v python || true)"
if [ -z "$PY3" ]; then echo "test.sh: no python3 on PATH" >&2; exit 2; fi

count_tests() {  # number of test files under the given folders
  local n=0 dir
  for dir in "$@"; do
    [ -d "$dir" ] && n=$((n + $(find "$dir" -name 'test_*.py' -o -name '*_test.py' | wc -l)))
  done
  echo "$n"
}

set +e
HOST="$("$PY3" tests/comfy_host.py)"
rc=$?
set -e
if [ "$rc" -eq 2 ]; then exit 2; fi   # COMFYUI_PATH is set but wrong: say so (printed above), don't skip tier 2

if [ -n "$HOST" ]; then
  bash scripts/setup_host.sh >&2
  PY="$("$PY3" tests/comfy_host.py --python)"
  TIERS="TIERS RUN: 1 (no ComfyUI) + 2 (ComfyUI host at $HOST)"
  TEST_FILES=$(count_tests tests/model tests/train tests/nodes tests/server)
  PYTEST_ARGS=(tests -q -rs -p no:cacheprovider)
else
  TIERS="TIERS RUN: 1 only (no ComfyUI host found; set COMFYUI_PATH or run scripts/setup_host.sh)"
  PY="$REPO/.venv/bin/python"
  if [ ! -x "$PY" ]; then
    echo "test.sh: creating .venv (torch 2.13.0 CPU)" >&2
    "$PY3" -m venv .venv
  fi
  if ! "$PY" -c "import torch, diffusers, peft, safetensors, einops, kornia, cv2, accelerate, pytest" >/dev/null 2>&1; then
    echo "test.sh: installing torch 2.13.0 (CPU), requirements.txt and pytest into .venv" >&2
    "$PY" -m pip install -q torch==2.13.0
    PINS="$(mktemp)"
    echo "torch==$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')" > "$PINS"
    REQS=()
    [ -f requirements.txt ] && REQS=(-r requirements.txt)
    "$PY" -m pip install -q -c "$PINS" "${REQS[@]}" pytest
    rm -f "$PINS"
  fi
  TEST_FILES=$(count_tests tests/model tests/train)
  PYTEST_ARGS=(tests -q -rs -p no:cacheprovider -m "not tier2")
fi

echo "$TIERS"
# Lint first: cheap, and the style anchors ask for ruff in CI (settings in pyproject.toml).
if ! "$PY" -m ruff --version >/dev/null 2>&1; then
  "$PY" -m pip install -q ruff >&2
fi
"$PY" -m ruff check . || { echo "test.sh: ruff found problems (run: $PY -m ruff check . --fix)"; exit 1; }
set +e
"$PY" -m pytest "${PYTEST_ARGS[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ] && [ "$TEST_FILES" -eq 0 ]; then
  echo "test.sh: no test files in the tiers that ran (pytest exit 5); nothing failed"
  rc=0
fi
echo "test.sh: pytest exit code $rc after $(( $(date +%s) - START )) s"
echo "$TIERS"
exit "$rc"
