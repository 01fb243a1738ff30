"""The workflows this pack ships, as the server, API, browser and file tests all enumerate them."""

from __future__ import annotations

import json

from refcustom.tests.comfy_host import REPO_ROOT

WORKFLOWS = REPO_ROOT / "workflows"
API_WORKFLOWS = sorted((WORKFLOWS / "api").glob("*.json"))  # API format: one per shipped workflow
UI_WORKFLOWS = sorted(WORKFLOWS.glob("*.json"))  # UI format: what the template browser lists
NAMES = [path.stem for path in API_WORKFLOWS]


def cheap_graph(headless, workflow, steps: int) -> dict:
    """The shipped API graph `workflow` (a path) on the fixture models, at 64 px, `steps` steps, references at
    most 64 px."""
    graph = headless.substitute_fixture_loaders(json.loads(workflow.read_text()))
    return headless.shrink_graph(graph, max_side=64, caps={"steps": steps, "ref_res": 64})


def node_of(graph: dict, class_type: str, n: int = 0) -> str:
    """Id of the n-th node of `class_type` (ids in numeric order)."""
    return sorted((k for k, v in graph.items() if v["class_type"] == class_type), key=lambda k: (len(k), k))[n]
