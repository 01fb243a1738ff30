#!/usr/bin/env bash
# refcustom's test command (README; .ci/run runs it).
#
# With a ComfyUI host (COMFYUI_PATH, a parent folder, or ~/ComfyUI; see tests/comfy_host.py; with none,
# scripts/setup_host.sh installs one from $COMFYUI_ARCHIVE or by cloning):
#   1. one pytest run with the host's Python covers tier 1 (tests/model, tests/train: no ComfyUI) and
#      tier 2 (tests/nodes in-process, tests/server against a headless server, the browser test);
#   2. if a floor host is there (scripts/setup_floor_host.sh: ~/ComfyUI-v0.3.60 or $COMFYUI_FLOOR_ARCHIVE),
#      the in-process node tests run again on it, the oldest ComfyUI pyproject's requires-comfyui admits.
# Without one: tier 1 only, in this repo's .venv (torch 2.13.0 CPU + requirements.txt + pytest).
# Tests run in a random order (pytest-randomly prints "Using --randomly-seed=N"; pass --randomly-seed=N to
# replay an order, -p no:randomly for file order). Each run prints the time per tier.
# Under CI=true it fails closed: scripts/ci_gate.py exits 1, saying why, unless tier 1, tier 2 (nodes,
# server, browser) on 0.8.0 and the nodes on the floor all ran with no test skipped.
# Extra arguments go to every pytest run. The last line printed says which tiers ran.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd -P)"
START=$(date +%s)
REPORTS="$(mktemp -d)"
trap 'rm -rf "$REPORTS"' EXIT

PY3="$(command -v python3 || command -v python || true)"
if [ -z "$PY3" ]; then echo "test.sh: no python3 on PATH" >&2; exit 2; fi
TEST_TOOLS=(pytest pytest-randomly)

count_tests() {  # number of test files under the given folders
  local n=0 dir
  for dir in "$@"; do
    [ -d "$dir" ] && n=$((n + $(find "$dir" -name 'test_*.py' -o -name '*_test.py' | wc -l)))
  done
  echo "$n"
}

# Make the host ready (venv, packages, link), or install one if there is none (archive or clone): one run,
# whose last line on stdout is the host's path (none when no host could be had). A COMFYUI_PATH that is not
# ComfyUI makes it exit 2 with the reason, and this script with it (pipefail): tier 2 is not skipped silently.
HOST="$(bash scripts/setup_host.sh | tail -n 1)"
FLOOR=""
if [ -n "$HOST" ]; then
  PY="$("$PY3" tests/comfy_host.py --python)"
  FLOOR="$(bash scripts/setup_floor_host.sh || true)"
  TIERS="TIERS RUN: 1 (no ComfyUI) + 2 (ComfyUI host at $HOST)"
  [ -n "$FLOOR" ] && TIERS="$TIERS + 2 nodes on the floor ComfyUI at $FLOOR"
  TEST_FILES=$(count_tests tests/model tests/train tests/nodes tests/server)
  PYTEST_ARGS=(tests -q -rs -p no:cacheprovider)
else
  TIERS="TIERS RUN: 1 only (no ComfyUI host found; set COMFYUI_PATH or COMFYUI_ARCHIVE, or run scripts/setup_host.sh)"
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
    "$PY" -m pip install -q -c "$PINS" "${REQS[@]}" "${TEST_TOOLS[@]}"
    rm -f "$PINS"
  fi
  TEST_FILES=$(count_tests tests/model tests/train)
  PYTEST_ARGS=(tests -q -rs -p no:cacheprovider -m "not tier2")
fi
if ! "$PY" -c "import pytest_randomly" >/dev/null 2>&1; then
  "$PY" -m pip install -q pytest-randomly >&2 || echo "test.sh: could not install pytest-randomly; tests run in file order" >&2
fi

echo "$TIERS"
# Lint first: cheap, and the style anchors ask for ruff in CI (settings in pyproject.toml).
if ! "$PY" -m ruff --version >/dev/null 2>&1; then
  "$PY" -m pip install -q ruff >&2
fi
"$PY" -m ruff check . || { echo "test.sh: ruff found problems (run: $PY -m ruff check . --fix)"; exit 1; }

TIMES=()
set +e
T0=$(date +%s)
REFCUSTOM_TIER_REPORT="$REPORTS/main.json" "$PY" -m pytest "${PYTEST_ARGS[@]}" "$@"
rc=$?
TIMES+=("tiers 1 + 2 on ${HOST:-no host}: $(( $(date +%s) - T0 )) s (pytest exit $rc)")
if [ "$rc" -eq 5 ] && [ "$TEST_FILES" -eq 0 ]; then
  echo "test.sh: no test files in the tiers that ran (pytest exit 5); nothing failed"
  rc=0
fi
if [ -n "$FLOOR" ]; then
  T0=$(date +%s)
  echo "test.sh: tier 2 in-process node tests on the floor ComfyUI at $FLOOR"
  COMFYUI_PATH="$FLOOR" REFCUSTOM_TIER_REPORT="$REPORTS/floor.json" \
    "$PY" -m pytest tests/nodes -q -rs -p no:cacheprovider "$@"
  floor_rc=$?
  TIMES+=("tier 2 nodes on the floor $FLOOR: $(( $(date +%s) - T0 )) s (pytest exit $floor_rc)")
  [ "$rc" -eq 0 ] && rc=$floor_rc
fi
set -e
for line in "${TIMES[@]}"; do echo "test.sh: $line"; done
if [ "${CI:-}" = "true" ]; then
  "$PY3" scripts/ci_gate.py "$REPORTS/main.json" "$REPORTS/floor.json" || { [ "$rc" -eq 0 ] && rc=1; }
fi
echo "test.sh: exit code $rc after $(( $(date +%s) - START )) s"
echo "$TIERS"
exit "$rc"
