#!/usr/bin/env bash
# Make the floor ComfyUI (the oldest release refcustom supports, pyproject's requires-comfyui) ready for
# the in-process node tests, and print its path. It shares the main host's .venv (same torch and
# packages: in-process tests start no server, so v0.3.60's older frontend pin does not matter).
#
#   scripts/setup_floor_host.sh
#
# Where: $COMFYUI_FLOOR_PATH, default ~/ComfyUI-v0.3.60. If that is not a ComfyUI yet, it is unpacked
# from $COMFYUI_FLOOR_ARCHIVE (a source archive such as ../shared/hosts/comfyui-v0.3.60.tar.gz).
# Prints nothing and exits 1, with the reason on stderr, when neither is there.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=lib/host_archive.sh
. "$REPO/scripts/lib/host_archive.sh"
FLOOR_VERSION=0.3.60
TARGET="${COMFYUI_FLOOR_PATH:-$HOME/ComfyUI-v$FLOOR_VERSION}"
say() { echo "setup_floor_host: $*" >&2; }

if [ ! -f "$TARGET/main.py" ] || [ ! -d "$TARGET/comfy" ]; then
  if [ -e "$TARGET" ]; then say "$TARGET exists but is not a ComfyUI source folder"; exit 1; fi
  if [ -z "${COMFYUI_FLOOR_ARCHIVE:-}" ]; then
    say "no floor host at $TARGET and no COMFYUI_FLOOR_ARCHIVE (e.g. ../shared/hosts/comfyui-v$FLOOR_VERSION.tar.gz)"
    exit 1
  fi
  say "unpacking $COMFYUI_FLOOR_ARCHIVE into $TARGET"
  extract_comfyui_archive "$COMFYUI_FLOOR_ARCHIVE" "$TARGET" || exit 1
fi
VERSION="$(comfyui_version_of "$TARGET")"
if [ "$VERSION" != "$FLOOR_VERSION" ]; then
  say "$TARGET holds ComfyUI $VERSION, not the floor $FLOOR_VERSION"; exit 1
fi
(cd "$TARGET" && pwd -P)
