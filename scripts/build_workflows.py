"""Generate the example workflows in workflows/ from one Python definition each.

Every workflow is written once as an API-format graph (`Graph`) in scripts/workflow_build/, the package
that does the work, one module per job (its __init__ lists them). From it this script writes

- workflows/api/<name>.json   API format, for /prompt and scripts/headless.py;
- workflows/<name>.json       UI (litegraph) format, which ComfyUI's template browser lists and the
                              frontend loads (only top-level *.json there is listed, so api/ stays out):
                              titled groups in a 2D layout, a Markdown read-me, a view that fits;
- workflows/<name>.jpg        the template browser's thumbnail (it asks for <name>.jpg next to the JSON);
- workflows/inputs/*.png      small procedural reference images the LoadImage nodes name.

Widget order, widget defaults and slot types come from the live node definitions: the script starts
a headless ComfyUI with this pack (scripts/headless.py), reads /object_info and stops it. Run it with
the host's Python:

    ~/ComfyUI/.venv/bin/python scripts/build_workflows.py            # (re)write everything
    ~/ComfyUI/.venv/bin/python scripts/build_workflows.py --check    # exit 1 if a file would change
    ... --object-info oi.json   # use a saved /object_info instead of starting a server
    ... --save-object-info oi.json

Output is deterministic (sorted keys, fixed ids, computed layout), so regenerating gives no diff.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import headless  # scripts/ is sys.path[0]: this file is run as a command
from workflow_build.files import WORKFLOWS, build, dump_json

REPO = WORKFLOWS.parent


def find_host() -> Path:
    """The ComfyUI checkout to start (tests/comfy_host.py's search: COMFYUI_PATH, parents, ~/ComfyUI)."""
    host = headless.comfy_host()
    try:
        root = host.find_comfyui()
    except host.ComfyUINotFound as exc:
        raise SystemExit(str(exc)) from None
    if root is None:
        raise SystemExit("ComfyUI not found: set COMFYUI_PATH or use --object-info")
    return root


def fetch_object_info(comfy_root: Path) -> dict:
    """GET /object_info from a headless ComfyUI that loads only this pack, started for it and stopped."""
    with tempfile.TemporaryDirectory(prefix="refcustom_wf_") as tmp:
        try:
            with headless.start_server(comfy_root, tmp, inputs=None) as server:
                return server.object_info()
        except headless.HeadlessError as exc:
            raise SystemExit(str(exc)) from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any file would change")
    parser.add_argument("--object-info", type=Path, help="read /object_info from this JSON instead of a server")
    parser.add_argument("--save-object-info", type=Path, help="also save the /object_info used to this file")
    parser.add_argument("--comfyui", type=Path, help="ComfyUI checkout (default: COMFYUI_PATH, parents, ~/ComfyUI)")
    args = parser.parse_args()

    if args.object_info:
        object_info = json.loads(args.object_info.read_text())
    else:
        object_info = fetch_object_info(args.comfyui or find_host())
    if args.save_object_info:
        args.save_object_info.write_bytes(dump_json(object_info))

    files = build(object_info)
    changed = [p for p, data in files.items() if not p.exists() or p.read_bytes() != data]
    if args.check:
        for p in changed:
            print(f"out of date: {p.relative_to(REPO)}")
        return 1 if changed else 0
    for p in changed:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(files[p])
        print(f"wrote {p.relative_to(REPO)}")
    print(f"{len(files)} files, {len(changed)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
