"""Write workflows/example_outputs/<name>.png: an output image of each shipped workflow that carries it.

Drag one of these PNGs onto ComfyUI's canvas and the workflow comes back, like any image ComfyUI's
SaveImage writes: the PNG has the same two text chunks, `workflow` (workflows/<name>.json, UI format,
what the frontend loads) and `prompt` (workflows/api/<name>.json, API format).

No model weights can be downloaded where this is built, so each image is the workflow's real output on
the tiny random test models (tests/fixtures), made smoke-test sized (128 px, 2 steps): the picture is
noise; the embedded workflow is the point. A workflow that outputs a batch contributes its first image.

    ~/ComfyUI/.venv/bin/python scripts/build_example_outputs.py           # (re)write the PNGs
    ~/ComfyUI/.venv/bin/python scripts/build_example_outputs.py --check   # metadata up to date? (no server)

--check does not start a server: it compares each PNG's chunks with the workflow files (pixels depend on
the torch build, the embedded workflows must not drift). tests/server/test_workflow_files.py does the same.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
EXAMPLE_OUTPUTS = WORKFLOWS / "example_outputs"


_load = runpy.run_path(str(REPO / "scripts" / "load_by_path.py"))["load_module"]


def workflow_names() -> list[str]:
    return sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json"))


def expected_chunks(name: str) -> dict[str, object]:
    """The parsed JSON each example PNG must carry, by chunk name."""
    return {"workflow": json.loads((WORKFLOWS / f"{name}.json").read_text()),
            "prompt": json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())}


def png_chunks(path: Path) -> dict[str, object]:
    """The PNG's text chunks that hold JSON, parsed (what ComfyUI's frontend reads on drop)."""
    from PIL import Image

    with Image.open(path) as image:
        text = dict(getattr(image, "text", {}) or image.info)
    return {key: json.loads(value) for key, value in text.items() if key in ("workflow", "prompt")}


def with_workflow(png: bytes, name: str) -> bytes:
    """`png` carrying SaveImage's chunks for workflow `name`: prompt = its API graph, workflow = its UI graph
    (scripts/headless.py's png_with_workflow, which the quick start's images go through too)."""
    chunks = expected_chunks(name)
    return _headless().png_with_workflow(png, chunks["prompt"], chunks["workflow"])


def _headless():
    """scripts/headless.py, loaded once (the server tests load it under the same name)."""
    return sys.modules.get("refcustom_headless") or _load("refcustom_headless", REPO / "scripts" / "headless.py")


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def stale(names: list[str]) -> list[str]:
    """What is wrong with EXAMPLE_OUTPUTS for these workflows: missing PNGs, drifted chunks, orphans."""
    problems = []
    for name in names:
        path = EXAMPLE_OUTPUTS / f"{name}.png"
        if not path.is_file():
            problems.append(f"missing: {_shown(path)}")
        elif png_chunks(path) != expected_chunks(name):
            problems.append(f"out of date (embedded workflow differs): {_shown(path)}")
    extra = sorted(p.name for p in EXAMPLE_OUTPUTS.glob("*.png") if p.stem not in names)
    problems += [f"no workflow for: {_shown(EXAMPLE_OUTPUTS / n)}" for n in extra]
    return problems


def build(names: list[str], comfyui: Path | None) -> None:
    headless = _headless()
    EXAMPLE_OUTPUTS.mkdir(parents=True, exist_ok=True)
    try:
        with headless.tiny_server(comfyui, prefix="refcustom-examples-") as server:
            for name in names:
                graph = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
                graph = headless.shrink_graph(headless.substitute_fixture_loaders(graph))
                images = server.images(server.run(graph, timeout=600))
                if not images:
                    raise SystemExit(f"{name}: the workflow output no image")
                target = EXAMPLE_OUTPUTS / f"{name}.png"
                target.write_bytes(with_workflow(images[0], name))
                print(f"wrote {target.relative_to(REPO)}")
    except headless.HeadlessError as exc:  # no host, the server did not start, or a workflow failed
        raise SystemExit(str(exc)) from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare the embedded workflows only; exit 1 if stale")
    parser.add_argument("--comfyui", type=Path, help="ComfyUI checkout (default: COMFYUI_PATH, parents, ~/ComfyUI)")
    parser.add_argument("names", nargs="*", help="workflow names (default: every workflows/api/*.json)")
    args = parser.parse_args()
    names = args.names or workflow_names()
    if args.check:
        problems = stale(workflow_names())
        print("\n".join(problems) or f"{len(workflow_names())} example PNGs up to date")
        return 1 if problems else 0
    build(names, args.comfyui)
    return 0


if __name__ == "__main__":
    sys.exit(main())
