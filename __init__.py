"""refcustom: reference-image customization for FLUX in ComfyUI (DreamO, AlignGen, SynCD).

ComfyUI imports this folder from custom_nodes/ and calls `comfy_entrypoint`. Outside ComfyUI the
same folder is the Python package `refcustom` (model/, train/), so nothing here imports ComfyUI at
module level.
"""

from __future__ import annotations

import logging


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
            return node_list()

    return RefCustomExtension()
