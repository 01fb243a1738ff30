"""The shipped workflow files stay what the generators make and what the live host accepts.

- Every workflow has its template thumbnail and an example output PNG whose embedded `workflow` / `prompt`
  chunks are exactly workflows/<name>.json / workflows/api/<name>.json (no host needed: tier 1 too).
- scripts/build_workflows.py --check against the running server's /object_info: the committed JSONs are
  what the generator writes from the live node definitions (tier 2).
- The quick start's run (scripts/headless.py run ... --tiny) writes images that carry the shipped workflow, not
  the tiny graph that ran (tier 2); headless.png_with_workflow, which writes those chunks for it and for the
  example PNGs, keeps the pixels.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from refcustom.tests.comfy_host import REPO_ROOT, find_comfyui, host_python

from .scripts import load_script
from .shipped_workflows import NAMES, WORKFLOWS


def example_outputs_module():
    return load_script("build_example_outputs.py")


def test_every_api_workflow_has_a_ui_twin_and_a_thumbnail():
    assert len(NAMES) >= 12, NAMES
    for name in NAMES:
        assert (WORKFLOWS / f"{name}.json").is_file(), f"workflows/{name}.json (UI format) is missing"
        thumbnail = WORKFLOWS / f"{name}.jpg"
        assert thumbnail.is_file() and thumbnail.read_bytes()[:3] == b"\xff\xd8\xff", f"{thumbnail} is not a JPEG"


@pytest.mark.parametrize("name", NAMES)
def test_example_png_carries_exactly_the_shipped_workflow(name):
    pytest.importorskip("PIL")
    builder = example_outputs_module()
    path = WORKFLOWS / "example_outputs" / f"{name}.png"
    assert path.is_file(), f"{path} is missing: run scripts/build_example_outputs.py"
    chunks = builder.png_chunks(path)
    # Parsed independently of the builder: the UI graph the frontend reads and the API graph.
    assert chunks["workflow"] == json.loads((WORKFLOWS / f"{name}.json").read_text())
    assert chunks["prompt"] == json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    assert chunks["workflow"]["nodes"], "the embedded workflow has no nodes"


def test_example_outputs_check_reports_drift_missing_and_orphans(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    builder = example_outputs_module()
    assert builder.stale(NAMES) == []
    fake = tmp_path / "example_outputs"
    fake.mkdir()
    drifted, missing = NAMES[0], NAMES[1]
    for name in NAMES[2:]:
        (fake / f"{name}.png").write_bytes((WORKFLOWS / "example_outputs" / f"{name}.png").read_bytes())
    # drifted: the PNG of another workflow carries a different graph under this one's name
    (fake / f"{drifted}.png").write_bytes((WORKFLOWS / "example_outputs" / f"{NAMES[2]}.png").read_bytes())
    (fake / "retired_workflow.png").write_bytes((WORKFLOWS / "example_outputs" / f"{NAMES[2]}.png").read_bytes())
    monkeypatch.setattr(builder, "EXAMPLE_OUTPUTS", fake)
    assert builder.stale(NAMES) == [
        f"out of date (embedded workflow differs): {fake / f'{drifted}.png'}",
        f"missing: {fake / f'{missing}.png'}",
        f"no workflow for: {fake / 'retired_workflow.png'}",
    ]


@pytest.mark.tier2
def test_generated_workflows_match_the_live_node_definitions(comfy_server, tmp_path):
    object_info = tmp_path / "object_info.json"
    object_info.write_text(json.dumps(comfy_server.object_info()))
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "build_workflows.py"), "--check",
                             "--object-info", str(object_info)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"workflows/ is out of date with the live nodes:\n{result.stdout}{result.stderr}"


def test_png_with_workflow_replaces_the_chunks_and_keeps_the_pixels(tmp_path):
    image = pytest.importorskip("PIL.Image")
    headless = load_script("headless.py")
    source = WORKFLOWS / "example_outputs" / f"{NAMES[0]}.png"
    prompt, workflow = {"1": {"class_type": "X", "inputs": {"text": "é"}}}, {"nodes": [], "links": []}
    # A PNG that carried other chunks gets exactly these; without a UI graph, no `workflow` chunk at all.
    rewritten = tmp_path / "rewritten.png"
    rewritten.write_bytes(headless.png_with_workflow(source.read_bytes(), prompt, workflow))
    assert example_outputs_module().png_chunks(rewritten) == {"prompt": prompt, "workflow": workflow}
    without_ui = tmp_path / "without_ui.png"
    without_ui.write_bytes(headless.png_with_workflow(source.read_bytes(), prompt, None))
    assert example_outputs_module().png_chunks(without_ui) == {"prompt": prompt}
    with image.open(source) as before, image.open(rewritten) as after:
        assert after.size == before.size and after.tobytes() == before.tobytes()


@pytest.mark.tier2
def test_the_quick_start_image_carries_the_shipped_workflow_not_the_tiny_graph(tmp_path):
    """scripts/quickstart.sh's run, shrunk: its PNG dropped on a normal ComfyUI gives dreamo_ip with the real
    loaders (no RefCustomTest_* fixture node, which only the test server knows)."""
    pytest.importorskip("PIL")
    root = find_comfyui()
    if root is None:
        pytest.skip("no ComfyUI host")
    result = subprocess.run([str(host_python(root)), "scripts/headless.py", "run", "workflows/api/dreamo_ip.json",
                             "--tiny", "--shrink", "--quiet", "--comfyui", str(root), "--out", str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"the quick start's run failed:\n{result.stdout}{result.stderr[-4000:]}"
    images = sorted(tmp_path.glob("*.png"))
    assert len(images) == 1, images
    chunks = example_outputs_module().png_chunks(images[0])
    assert chunks["workflow"] == json.loads((WORKFLOWS / "dreamo_ip.json").read_text())
    assert chunks["prompt"] == json.loads((WORKFLOWS / "api" / "dreamo_ip.json").read_text())
    assert not [n for n in chunks["prompt"].values() if n["class_type"].startswith("RefCustomTest_")]
