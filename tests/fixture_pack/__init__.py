"""Test-only ComfyUI custom-node folder: the tiny-model fixture nodes (tests/fixtures/fixture_nodes.py).

The pack's own `__init__.py` carries no test code. `scripts/headless.py` links this folder into a test
server's custom_nodes/ as `refcustom_test_fixtures` (after `refcustom`, so the pack loads first) when
it is asked for the fixtures (the tests, the tiny quick start, the example-output builder).
"""

from __future__ import annotations

import logging
import runpy
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_NODES = REPO_ROOT / "tests" / "fixtures" / "fixture_nodes.py"


def _fixture_nodes() -> list:
    load_module = runpy.run_path(str(REPO_ROOT / "scripts" / "load_by_path.py"))["load_module"]
    return load_module("refcustom_test_fixture_nodes", FIXTURE_NODES, register=False).get_fixture_nodes()


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    class RefCustomTestFixtures(ComfyExtension):
        async def get_node_list(self):
            logging.warning("refcustom_test_fixtures: registering the test fixture nodes (tiny random models)")
            return _fixture_nodes()

    return RefCustomTestFixtures()
