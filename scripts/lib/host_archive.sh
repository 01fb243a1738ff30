# Sourced by scripts/setup_host.sh and scripts/test.sh: install ComfyUI from a local source archive.
#
#   extract_comfyui_archive ARCHIVE TARGET
#
# ARCHIVE is a .tar.gz holding one ComfyUI source folder (../shared/hosts/comfyui-v*.tar.gz are such
# archives: `ComfyUI/` with main.py and comfy/, no .git). It is unpacked next to TARGET and moved into
# place only once it is known to be ComfyUI, so a wrong file never leaves a half-made host behind.
# Prints nothing on stdout; returns non-zero with a message on stderr when the archive is not usable.

extract_comfyui_archive() {
  local archive="$1" target="$2" staging top
  if [ ! -f "$archive" ]; then
    echo "host archive: $archive does not exist" >&2; return 1
  fi
  mkdir -p "$(dirname "$target")"
  staging="$(mktemp -d "$(dirname "$target")/.comfyui-unpack.XXXXXX")"
  if ! tar xzf "$archive" -C "$staging"; then
    rm -rf "$staging"; echo "host archive: $archive is not a readable .tar.gz" >&2; return 1
  fi
  # The source folder is the archive's only top-level entry (or the archive root itself).
  top="$staging"
  if [ "$(find "$staging" -mindepth 1 -maxdepth 1 | wc -l)" -eq 1 ]; then
    top="$(find "$staging" -mindepth 1 -maxdepth 1)"
  fi
  if [ ! -f "$top/main.py" ] || [ ! -d "$top/comfy" ]; then
    rm -rf "$staging"
    echo "host archive: $archive holds no ComfyUI source folder (main.py and comfy/ at its top)" >&2; return 1
  fi
  mv "$top" "$target"
  rm -rf "$staging"
}

comfyui_version_of() {  # the version string ComfyUI declares in comfyui_version.py, or "unknown"
  sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null | head -1 | grep . || echo unknown
}
