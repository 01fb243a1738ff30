"""Every generated file as bytes: deterministic JSON (sorted keys, node ids in numeric order), PNG, JPEG."""

from __future__ import annotations

import io
import json
from pathlib import Path

from .api_format import api_graph
from .catalog import ALL
from .checks import check_api, check_ui
from .images import make_inputs, make_thumbnail
from .node_defs import NodeDef
from .ui_format import ui_graph

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def sorted_json(obj):
    """Dict keys sorted (numerically where all keys are node ids), recursively."""
    if isinstance(obj, dict):
        keys = sorted(obj, key=int) if obj and all(str(k).isdigit() for k in obj) else sorted(obj)
        return {k: sorted_json(obj[k]) for k in keys}
    if isinstance(obj, list):
        return [sorted_json(v) for v in obj]
    return obj


def dump_json(obj) -> bytes:
    return (json.dumps(sorted_json(obj), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def jpg_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85, optimize=True)
    return buf.getvalue()


def build(object_info: dict) -> dict[Path, bytes]:
    """Every generated file: path -> content."""
    needed = {n.class_type for wf in ALL for n in wf().nodes}
    missing = sorted(t for t in needed if t not in object_info)
    if missing:
        raise SystemExit(f"node types missing from /object_info: {missing} (is the pack loading?)")
    defs = {t: NodeDef(t, object_info[t]) for t in needed}
    inputs = make_inputs()
    files: dict[Path, bytes] = {WORKFLOWS / "inputs" / name: png_bytes(im) for name, im in sorted(inputs.items())}
    for wf in ALL:
        g = wf()
        for n in g.nodes:
            if n.class_type == "LoadImage" and n.inputs["image"] not in inputs:
                raise SystemExit(f"{g.name}: LoadImage names {n.inputs['image']}, which is not generated")
        api = api_graph(g, defs)
        ui = ui_graph(g, defs)
        problems = check_api(api, object_info) + check_ui(ui, object_info)
        if problems:
            raise SystemExit(f"{g.name}:\n  " + "\n  ".join(problems))
        files[WORKFLOWS / "api" / f"{g.name}.json"] = dump_json(api)
        files[WORKFLOWS / f"{g.name}.json"] = dump_json(ui)
        files[WORKFLOWS / f"{g.name}.jpg"] = jpg_bytes(make_thumbnail(g, inputs))
    return files
