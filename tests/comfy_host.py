"""Where the ComfyUI host for tier-2 tests is. Stdlib only: scripts and any python3 can use it.

Search order (`find_comfyui`):
1. `COMFYUI_PATH`, if set. It must be a ComfyUI checkout (main.py and comfy/); anything else is an error,
   not a silent fall-through, so a typo does not quietly turn tier 2 off.
2. A parent folder of this repository that holds `custom_nodes/` and `main.py` (the repository is
   installed as <ComfyUI>/custom_nodes/<name>).
3. `~/ComfyUI`, if it has main.py and comfy/.

Run as a script it prints the host path (exit 0) or nothing (exit 1); `--python` prints the host's
Python instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_VAR = "COMFYUI_PATH"


class ComfyUINotFound(RuntimeError):
    """COMFYUI_PATH is set but does not point at a ComfyUI checkout."""


def is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir()


def _logical_repo_paths() -> list[Path]:
    """This repository's path as the caller reached it, symlinks kept (the shell's $PWD if it is the cwd)."""
    here = os.path.abspath(__file__)
    paths = [Path(here).parent.parent]
    pwd, cwd = os.environ.get("PWD"), os.getcwd()
    try:
        if pwd and pwd != cwd and os.path.samefile(pwd, cwd) and here.startswith(os.path.join(cwd, "")):
            paths.insert(0, Path(pwd, os.path.relpath(here, cwd)).parent.parent)
    except OSError:
        pass
    return paths


def find_comfyui() -> Path | None:
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        path = Path(env).expanduser().resolve()
        if not is_comfyui(path):
            raise ComfyUINotFound(
                f"{ENV_VAR}={env} is not a ComfyUI checkout (it needs main.py and a comfy/ folder). "
                f"Unset it to use ~/ComfyUI, or point it at a ComfyUI v0.8.0 checkout."
            )
        return path
    # Installed as <ComfyUI>/custom_nodes/<name>: look at the unresolved paths first (a symlinked
    # checkout), then the resolved one.
    for start in (*_logical_repo_paths(), REPO_ROOT):
        for parent in start.parents:
            if parent.name == "custom_nodes" and is_comfyui(parent.parent):
                return parent.parent.resolve()
    home = Path.home() / "ComfyUI"
    if is_comfyui(home):
        return home.resolve()
    return None


def host_python(root: Path) -> Path:
    """The host's own interpreter (`.venv/bin/python`) if it has one, else this interpreter."""
    venv_python = Path(root) / ".venv" / "bin" / "python"
    if venv_python.exists():
        return venv_python
    return Path(sys.executable)


def main(argv: list[str]) -> int:
    try:
        root = find_comfyui()
    except ComfyUINotFound as exc:
        print(exc, file=sys.stderr)
        return 2
    if root is None:
        return 1
    print(host_python(root) if "--python" in argv else root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
