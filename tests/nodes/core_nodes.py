"""Run a core ComfyUI node the way the executor would, whichever node API the host writes it in.

Core nodes move from the V1 API (a class with FUNCTION, called on an instance) to V3 (`define_schema` +
classmethod `execute` returning a NodeOutput) from release to release: ReferenceLatent and
EmptySD3LatentImage are V1 on the floor host (v0.3.60) and V3 on v0.8.0. Tests call them through
`run_core_node` so one test body runs on both hosts. Inputs go by name, as the executor passes them.
"""

from __future__ import annotations


def run_core_node(node_class, **inputs) -> tuple:
    """The node's outputs as a tuple."""
    if hasattr(node_class, "define_schema"):  # V3: comfy_api's ComfyNode
        return tuple(node_class.execute(**inputs).args)
    result = getattr(node_class(), node_class.FUNCTION)(**inputs)
    if isinstance(result, dict):  # V1 nodes with a UI part return {"ui": ..., "result": (...)}
        result = result["result"]
    return tuple(result)
