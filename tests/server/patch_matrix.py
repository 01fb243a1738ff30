"""Every model-level patch of the pack, as a user wires it, and the graphs the model-management sequences run.

A `PatchCase` names a shipped API workflow and the node of ours in it that patches the model (a loader,
a MODEL patch or a GUIDER). Everything the sequence tests need is derived from that: the shrunk graph on
the tiny fixture models, the same graph with a core LoraLoaderModelOnly before or after our node, with the
sampling probe (tests/fixtures/fixture_nodes.py) in front of the sampler, on another model instance (a
fresh model object, what a freshly started server loads) or with fp8 weights. Adding the next patch to
the matrix is one line in PATCH_CASES.

The model every sequence reuses is the fixture loader's instance 0, the one every other server test of
the session uses too: a model that has been through graph after graph, as on a user's long-running server.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from refcustom.tests.fixtures.dreamo_files import USER_LORA_FILE

from .shipped_workflows import WORKFLOWS

LOADER = "RefCustomTest_TinyFluxLoader"
USER_LORA = Path(USER_LORA_FILE).name  # in the server's models/loras (tests/fixtures/dreamo_files.py)
STEPS, SIZE, REF_RES = 2, 64, 64
_FRESH_INSTANCES = itertools.count(1_000_000)  # above anything else the session uses


def all_dreamo_loras(graph: dict) -> None:
    """Load DreamO with every LoRA slot on (the official files and strengths)."""
    files = {"cfg_distill": "dreamo_cfg_distill.safetensors", "turbo": "flux-turbo.safetensors",
             "sft": "v1.1/dreamo_sft_lora.safetensors", "dpo": "v1.1/dreamo_dpo_lora.safetensors",
             "quality_pos": "dreamo_quality_lora_pos.safetensors", "quality_neg": "dreamo_quality_lora_neg.safetensors"}
    [loader] = [n for n in graph.values() if n["class_type"] == "RefCustom_DreamOLoader"]
    for slot, name in files.items():
        loader["inputs"][f"{slot}_lora"] = name


@dataclass(frozen=True)
class PatchCase:
    name: str
    workflow: str  # workflows/api/<workflow>.json
    node: str  # class_type of our node that patches the model
    outputs_model: bool  # a MODEL comes out (a core LoRA can follow it); False for GUIDERs
    edit: object = field(default=None, compare=False)  # graph -> None, applied after shrinking

    def __str__(self):
        return self.name


PATCH_CASES = (
    PatchCase("dreamo_all_loras", "dreamo_ip", "RefCustom_DreamOLoader", True, edit=all_dreamo_loras),
    PatchCase("aligngen", "aligngen_single_concept", "RefCustom_AlignGenLoader", True),
    PatchCase("masked_shared_attention", "syncd_consistent_batch", "RefCustom_MaskedSharedAttention", True),
    PatchCase("shared_attention_reference", "syncd_reference", "RefCustom_SharedAttentionReference", True),
    PatchCase("true_cfg_guider", "dreamo_id", "RefCustom_TrueCFGGuider", False),
    PatchCase("normalized_guider", "kontext_normalized_guidance", "RefCustom_NormalizedGuidanceGuider", False),
)


# ---- graphs ----

def _node(graph: dict, class_type: str) -> str:
    [node_id] = [k for k, v in graph.items() if v["class_type"] == class_type]
    return node_id


def _consumers(graph: dict, source: str, output: int = 0):
    for node_id, node in graph.items():
        for name, value in node["inputs"].items():
            if value == [source, output]:
                yield node_id, name


def _insert_after(graph: dict, source: str, new_id: str, node: dict, input_name: str = "model") -> None:
    """Put `node` between `source`'s MODEL output and everything that reads it."""
    for node_id, name in list(_consumers(graph, source)):
        graph[node_id]["inputs"][name] = [new_id, 0]
    graph[new_id] = {**node, "inputs": {**node["inputs"], input_name: [source, 0]}}


def _user_lora(strength: float) -> dict:
    return {"class_type": "LoraLoaderModelOnly",
            "inputs": {"lora_name": USER_LORA, "strength_model": strength}, "_meta": {"title": "user LoRA"}}


def patch_graph(headless, case: PatchCase, lora: tuple[str, float] | None = None, probe: dict | None = None,
                weight_dtype: str = "default") -> dict:
    """The case's workflow on the tiny models, shrunk; `lora` = ("before" | "after", strength) adds a core
    LoraLoaderModelOnly on our node's model input or on its MODEL output; `probe` = the sampling probe's
    inputs, put on the model right in front of the sampler (or the guider)."""
    graph = headless.substitute_fixture_loaders(json.loads((WORKFLOWS / "api" / f"{case.workflow}.json").read_text()))
    graph = headless.shrink_graph(graph, max_side=SIZE, caps={"steps": STEPS, "ref_res": REF_RES})
    if case.edit is not None:
        case.edit(graph)
    ours = _node(graph, case.node)
    set_model_options(graph, weight_dtype=weight_dtype)
    if lora is not None:
        where, strength = lora
        if where == "before":
            node = _user_lora(strength)
            graph["user_lora"] = {**node, "inputs": {**node["inputs"], "model": graph[ours]["inputs"]["model"]}}
            graph[ours]["inputs"]["model"] = ["user_lora", 0]
        elif where == "after" and case.outputs_model:
            _insert_after(graph, ours, "user_lora", _user_lora(strength))
        else:
            raise ValueError(f"{case}: no core LoRA {where} a {case.node}")
    if probe is not None:
        node = {"class_type": "RefCustomTest_SamplingProbe", "inputs": dict(probe)}
        if case.outputs_model:  # on the MODEL the sampler gets: after ours, or after the LoRA that follows it
            _insert_after(graph, "user_lora" if lora and lora[0] == "after" else ours, "probe", node)
        else:
            graph["probe"] = {**node, "inputs": {**node["inputs"], "model": graph[ours]["inputs"]["model"]}}
            graph[ours]["inputs"]["model"] = ["probe", 0]
    return graph


def plain_graph(lora_strength: float | None = None, weight_dtype: str = "default", prefix: str = "") -> dict:
    """Plain FLUX on the same tiny model (instance 0), optionally through a core LoraLoaderModelOnly.

    `prefix` renames every node but the loaders, so the graph can join another one in the same prompt."""
    p = prefix
    graph = {
        "1": {"class_type": LOADER, "inputs": {"seed": 0}},
        "2": {"class_type": "RefCustomTest_TinyCLIPLoader", "inputs": {"seed": 0}},
        "3": {"class_type": "RefCustomTest_TinyVAELoader", "inputs": {"seed": 0}},
        f"{p}4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a red toy robot on a table"}},
        f"{p}5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": ""}},
        f"{p}6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        f"{p}7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": [f"{p}4", 0], "negative": [f"{p}5", 0], "latent_image": [f"{p}6", 0],
            "seed": 42, "steps": STEPS, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        f"{p}8": {"class_type": "VAEDecode", "inputs": {"samples": [f"{p}7", 0], "vae": ["3", 0]}},
        f"{p}9": {"class_type": "SaveImage", "inputs": {"images": [f"{p}8", 0], "filename_prefix": "refcustom_test/plain"}},
    }
    if lora_strength is not None:
        _insert_after(graph, "1", f"{p}user_lora", _user_lora(lora_strength))
    set_model_options(graph, weight_dtype=weight_dtype)
    return graph


def set_model_options(graph: dict, weight_dtype: str | None = None, instance: int | None = None) -> dict:
    """Set weight_dtype / instance on every tiny FLUX loader of `graph` (in place); returns it."""
    for node in graph.values():
        if node["class_type"] == LOADER:
            if weight_dtype not in (None, "default"):
                node["inputs"]["weight_dtype"] = weight_dtype
            if instance is not None:
                node["inputs"]["instance"] = instance
    return graph


def on_fresh_model(graph: dict) -> dict:
    """The same graph on a model object no prompt has used yet."""
    return set_model_options(copy.deepcopy(graph), instance=next(_FRESH_INSTANCES))


def merged(first: dict, second: dict) -> dict:
    """Two graphs in one prompt; nodes with the same id must be the same node (the shared loaders)."""
    out = copy.deepcopy(first)
    for node_id, node in second.items():
        if node_id in out and out[node_id] != node:
            raise ValueError(f"node {node_id} differs between the graphs: rename it (plain_graph's prefix)")
        out[node_id] = copy.deepcopy(node)
    return out
