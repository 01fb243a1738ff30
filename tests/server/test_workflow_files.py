"""The shipped workflow files stay what the generators make and what the live host accepts.

- Every workflow has its template thumbnail and an example output PNG whose embedded `workflow` / `prompt`
  chunks are exactly workflows/<name>.json / workflows/api/<name>.json (no host needed: tier 1 too).
- scripts/build_workflows.py --check against the running server's /object_info: the committed JSONs are
  what the generator writes from the live node definitions (tier 2).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from refcustom.tests.comfy_host import REPO_ROOT

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
