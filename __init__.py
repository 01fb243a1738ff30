"""refcustom: reference-image customization for FLUX in ComfyUI (DreamO, AlignGen, SynCD).

ComfyUI imports this folder from custom_nodes/ and calls `comfy_entrypoint`. Outside ComfyUI the
same folder is the Python package `refcustom` (model/, train/), so nothing here imports ComfyUI at
module level.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

FIXTURES_ENV = "REFCUSTOM_TEST_FIXTURES"


def _fixture_nodes() -> list:
    """Tiny-model loader nodes for the test server; registered only when REFCUSTOM_TEST_FIXTURES=1."""
    path = Path(__file__).parent / "tests" / "fixtures" / "fixture_nodes.py"
    spec = importlib.util.spec_from_file_location("refcustom_test_fixture_nodes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    logging.warning("refcustom: %s=1, registering test fixture nodes (tiny random models)", FIXTURES_ENV)
    return module.get_fixture_nodes()


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    from .nodes import node_list
    from .nodes.host_version import host_version, too_old_message

    too_old = too_old_message(host_version())

    class RefCustomExtension(ComfyExtension):
        async def get_node_list(self):
            if too_old:
                logging.error(too_old)
                return []
            nodes = node_list()
            if os.environ.get(FIXTURES_ENV) == "1":
                nodes += _fixture_nodes()
            return nodes

    return RefCustomExtension()
