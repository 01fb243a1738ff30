#!/usr/bin/env bash
# Make a ComfyUI host ready for refcustom's tier-2 tests. Idempotent; safe to run before every test run.
#
#   scripts/setup_host.sh [--require] [--archive comfyui-v0.8.0.tar.gz]
#
# 1. Find the host like tests/comfy_host.py does: $COMFYUI_PATH, a parent folder of this repository
#    (installed as ComfyUI/custom_nodes/<name>), then ~/ComfyUI. If there is none, install ComfyUI v0.8.0
#    into ~/ComfyUI: from a local source archive when one is given (--archive or $COMFYUI_ARCHIVE; for
#    air-gapped machines, see ../shared/hosts/README.md), else by cloning commit 3cd7b32f. If that fails,
#    say how to provide a host and exit 0 (1 with --require).
# 2. Create <host>/.venv if it is missing: torch 2.14.1 + torchvision 0.29.1, torchaudio 2.11.0, ComfyUI's
#    requirements.txt, then this pack's requirements.txt, pytest, transformers and sentencepiece.
# 3. Install this pack's requirements into that venv if `import diffusers, peft, safetensors, einops,
#    kornia, cv2, accelerate` fails (and pytest + pytest-randomly if missing), keeping the venv's torch as it is.
# 3a. Install this checkout into that venv as the package `refcustom` (`pip install --no-deps -e`, so
#    `<host>/.venv/bin/python -m refcustom.train` works from any folder) unless `import refcustom` already
#    finds this checkout there.
# 3b. Install the tier-2 test tools (websocket-client, playwright, comfy-cli) and, as root with apt-get,
#    Debian's chromium.
# 4. Link this repository as <host>/custom_nodes/refcustom unless a link to it is already there.
# Progress goes to stderr; the last line on stdout is the host's path.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
COMFY_COMMIT=3cd7b32f1b7e7e90395cefe7d9f9b1f89276d8ce
COMFY_URL=https://github.com/comfyanonymous/ComfyUI
PACK_NAME=refcustom
REQUIRE=0
ARCHIVE="${COMFYUI_ARCHIVE:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --require) REQUIRE=1 ;;
    --archive) ARCHIVE="${2:?--archive needs a path}"; shift ;;
    --archive=*) ARCHIVE="${1#--archive=}" ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
    *) echo "setup_host.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
# shellcheck source=lib/host_archive.sh
. "$REPO/scripts/lib/host_archive.sh"

say() { echo "setup_host: $*" >&2; }
PY3="$(command -v python3 || command -v python || true)"
if [ -z "$PY3" ]; then say "no python3 on PATH"; exit 2; fi

# ---- 1. the host ----
set +e
HOST="$("$PY3" "$REPO/tests/comfy_host.py")"
rc=$?
set -e
if [ "$rc" -eq 2 ]; then exit 2; fi   # COMFYUI_PATH set to something that is not ComfyUI (message printed)

no_host() {
  say "no ComfyUI host: $1"
  say "Provide one with COMFYUI_PATH=/path/to/ComfyUI (ComfyUI v0.8.0, commit ${COMFY_COMMIT:0:8}, with its"
  say "own .venv), or COMFYUI_ARCHIVE=/path/to/comfyui-v0.8.0.tar.gz (a source archive, as in ../shared/hosts),"
  say "or clone $COMFY_URL into ~/ComfyUI and check out $COMFY_COMMIT, then run this script again."
  say "Without a host only tier 1 runs (tier-2 tests are skipped)."
  if [ "$REQUIRE" -eq 1 ]; then exit 1; fi
  exit 0
}

if [ -z "$HOST" ]; then
  TARGET="$HOME/ComfyUI"
  if [ -e "$TARGET" ]; then no_host "$TARGET exists but is not a ComfyUI checkout (no main.py and comfy/)"; fi
  if [ -n "$ARCHIVE" ]; then
    say "no ComfyUI host found; installing it from the archive $ARCHIVE into $TARGET"
    extract_comfyui_archive "$ARCHIVE" "$TARGET" || no_host "the archive $ARCHIVE could not be installed (above)"
    HOST="$(cd "$TARGET" && pwd -P)"
    VERSION="$(comfyui_version_of "$HOST")"
    say "installed ComfyUI $VERSION from $ARCHIVE"
    [ "$VERSION" = "0.8.0" ] || say "note: the tests are pinned to ComfyUI 0.8.0; this archive holds $VERSION"
  else
    say "no ComfyUI host found; cloning ComfyUI v0.8.0 into $TARGET (set COMFYUI_ARCHIVE to install offline)"
  fi
fi
if [ -z "$HOST" ]; then
  if GIT_TERMINAL_PROMPT=0 timeout 600 git clone -q "$COMFY_URL" "$TARGET" \
      && git -C "$TARGET" -c advice.detachedHead=false checkout -q "$COMFY_COMMIT"; then
    HOST="$(cd "$TARGET" && pwd -P)"
  else
    rm -rf "$TARGET"
    no_host "cloning $COMFY_URL failed (no network? set COMFYUI_ARCHIVE to a source archive instead)"
  fi
fi
say "ComfyUI host: $HOST"
PY="$HOST/.venv/bin/python"

# pip must not move the venv's torch: pin whatever torch* it has while installing anything else.
pin_torch() {
  local pins
  pins="$(mktemp)"
  "$PY" - "$pins" <<'EOF'
import importlib.metadata as md, sys
with open(sys.argv[1], "w") as f:
    for name in ("torch", "torchvision", "torchaudio"):
        try:
            f.write(f"{name}=={md.version(name)}\n")
        except md.PackageNotFoundError:
            pass
EOF
  echo "$pins"
}

# ---- 2. the venv ----
if [ ! -x "$PY" ]; then
  say "creating $HOST/.venv (about 2 minutes, 6.5 GB: torch 2.14.1 is a CUDA build that also runs on the CPU)"
  "$PY3" -m venv "$HOST/.venv"
  "$PY" -m pip install -q --upgrade pip
  say "  1/3 torch 2.14.1 + torchvision 0.29.1 + torchaudio 2.11.0 (the largest part)"
  "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
  "$PY" -m pip install -q torchaudio==2.11.0
  PINS="$(pin_torch)"
  say "  2/3 ComfyUI's requirements.txt"
  "$PY" -m pip install -q -c "$PINS" -r "$HOST/requirements.txt" requests pytest
  say "  3/3 refcustom's requirements.txt and the test tools"
  if [ -f "$REPO/requirements.txt" ]; then
    "$PY" -m pip install -q -c "$PINS" -r "$REPO/requirements.txt"
  fi
  "$PY" -m pip install -q -c "$PINS" pytest pytest-randomly transformers sentencepiece
  rm -f "$PINS"
fi

# ---- 3. this pack's dependencies ----
if ! "$PY" -c "import diffusers, peft, safetensors, einops, kornia, cv2, accelerate" >/dev/null 2>&1; then
  say "installing refcustom's requirements into $HOST/.venv"
  PINS="$(pin_torch)"
  if [ -f "$REPO/requirements.txt" ]; then
    "$PY" -m pip install -q -c "$PINS" -r "$REPO/requirements.txt"
  else
    "$PY" -m pip install -q -c "$PINS" diffusers peft safetensors einops kornia opencv-python-headless accelerate
  fi
  rm -f "$PINS"
fi
if ! "$PY" -c "import pytest, pytest_randomly" >/dev/null 2>&1; then
  PINS="$(pin_torch)"
  "$PY" -m pip install -q -c "$PINS" pytest pytest-randomly
  rm -f "$PINS"
fi

# ---- 3a. this checkout as the package `refcustom` in the host's Python ----
# The repository root is the package (pyproject: package-dir refcustom = "."). An editable install maps the
# name to this folder, so training runs with ComfyUI's Python from anywhere, and edits need no reinstall.
# --no-deps: the requirements are installed above and the venv's torch must not move. Without build
# isolation first (offline hosts: the venv's own setuptools), then with it (fetches setuptools>=69).
refcustom_here() {
  (cd / && "$PY" - "$REPO" <<'EOF'
import importlib.util, os, sys
spec = importlib.util.find_spec("refcustom")
places = list(spec.submodule_search_locations or []) if spec else []
sys.exit(0 if any(os.path.realpath(p) == os.path.realpath(sys.argv[1]) for p in places) else 1)
EOF
  ) >/dev/null 2>&1
}
if ! refcustom_here; then
  say "installing this checkout into $HOST/.venv as the package refcustom (pip install --no-deps -e $REPO)"
  if ! { "$PY" -m pip install -q --no-deps --no-build-isolation -e "$REPO" >/dev/null 2>&1 \
         || "$PY" -m pip install -q --no-deps -e "$REPO"; } || ! refcustom_here; then
    say "could not install this checkout: \`$PY -m refcustom.train\` will not find the package. Run:"
    say "  $PY -m pip install --no-deps -e $REPO"
  fi
fi

# ---- 3b. tier-2 test tools: the headless API example's client and the browser test's driver ----
# websocket-client: scripts/api_example.py follows progress over ComfyUI's WebSocket (as ComfyUI's own
# script_examples do). playwright: the Python driver (its wheel carries the driver, not a browser; the
# browser test uses Debian's /usr/bin/chromium, so `playwright install` is never run).
if ! "$PY" -c "import websocket, playwright" >/dev/null 2>&1; then
  PINS="$(pin_torch)"
  "$PY" -m pip install -q -c "$PINS" websocket-client playwright || say "could not install websocket-client/playwright"
  rm -f "$PINS"
fi
# comfy-cli: tests/server/test_packaging.py runs `comfy node validate` and `comfy node pack` (the registry's
# own packer) and lists the package. Pinned to the minor version whose packing rules the test was written
# against (git-tracked files minus .comfyignore).
if ! "$PY" -c "import comfy_cli" >/dev/null 2>&1; then
  PINS="$(pin_torch)"
  "$PY" -m pip install -q -c "$PINS" "comfy-cli~=1.23.0" || say "could not install comfy-cli (the packaging test will fail)"
  rm -f "$PINS"
fi
# Chromium for the browser test (tests/server/test_browser_canvas.py skips with a reason without it).
if ! command -v chromium >/dev/null 2>&1 && [ -z "${REFCUSTOM_CHROMIUM:-}" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's chromium for the browser test"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
      || say "could not install chromium; the browser test will be skipped"
  else
    say "no chromium and no root apt-get: the browser test will be skipped (install Debian's chromium)"
  fi
fi

# ---- 4. the pack in custom_nodes/ ----
mkdir -p "$HOST/custom_nodes"
linked=""
for entry in "$HOST"/custom_nodes/*; do
  [ -e "$entry" ] || continue
  if [ "$(cd "$entry" 2>/dev/null && pwd -P)" = "$REPO" ]; then linked="$entry"; break; fi
done
LINK="$HOST/custom_nodes/$PACK_NAME"
if [ -n "$linked" ]; then
  say "this repository is already in custom_nodes: $linked"
elif [ -L "$LINK" ] && [ ! -e "$LINK" ]; then
  say "replacing the dangling link $LINK -> $(readlink "$LINK")"
  ln -sfn "$REPO" "$LINK"
elif [ -e "$LINK" ]; then
  say "$LINK is another copy of the pack ($(readlink -f "$LINK")); leaving it. The tests do not need it:"
  say "their headless server links this checkout into its own base directory."
else
  ln -s "$REPO" "$LINK"
  say "linked $LINK -> $REPO"
fi

echo "$HOST"
