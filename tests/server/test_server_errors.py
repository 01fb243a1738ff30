"""Bad input through the HTTP API: each case fails in our node with a message naming the fix, and
the server goes on serving (tier 2, headless server). These are edits of the single-subject graph;
the table of one bad input per shipped workflow (the AlignGen ones included) is test_api_workflows.py."""

from __future__ import annotations

import json

import pytest

from refcustom.tests.comfy_host import REPO_ROOT

pytestmark = pytest.mark.tier2

IP_WORKFLOW = REPO_ROOT / "workflows" / "api" / "dreamo_ip.json"


def base_graph(headless):
    """The single-subject workflow on the fixture models, made cheap."""
    graph = headless.substitute_fixture_loaders(json.loads(IP_WORKFLOW.read_text()))
    return headless.shrink_graph(graph, max_side=64, caps={"steps": 1, "ref_res": 64})


def node_of(graph, class_type):
    [node_id] = [k for k, v in graph.items() if v["class_type"] == class_type]
    return node_id


def too_many_references(graph):
    reference = node_of(graph, "RefCustom_DreamOReference")
    previous = reference
    for i in range(9):  # 1 shipped + 9 more = 10 references
        new_id = f"extra_ref_{i}"
        graph[new_id] = json.loads(json.dumps(graph[reference]))
        graph[new_id]["inputs"]["conditioning"] = [previous, 0]
        previous = new_id
    graph[node_of(graph, "FluxGuidance")]["inputs"]["conditioning"] = [previous, 0]
    return "too many references: DreamO tells at most 9 apart"


def non_flux_model(graph):
    graph[node_of(graph, "RefCustomTest_TinyFluxLoader")]["class_type"] = "RefCustomTest_TinyNonFluxLoader"
    return "DreamO needs a FLUX.1 model"


def wrong_weight_file(graph):
    graph[node_of(graph, "RefCustom_DreamOLoader")]["inputs"]["dreamo_file"] = "flux-turbo.safetensors"
    return "flux-turbo.safetensors holds no DreamO embedding tables"


def mask_not_matching_image(graph):
    graph["bad_mask"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 40, "height": 24}}
    graph[node_of(graph, "RefCustom_DreamOReference")]["inputs"]["mask"] = ["bad_mask", 0]
    return "the MASK is 40x24 but its reference image is"


def empty_mask(graph):
    image = graph[node_of(graph, "RefCustom_DreamOReference")]["inputs"]["image"]
    graph["size"] = {"class_type": "GetImageSize", "inputs": {"image": image}}
    graph["empty_mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": ["size", 0], "height": ["size", 1]}}
    graph[node_of(graph, "RefCustom_DreamOReference")]["inputs"]["mask"] = ["empty_mask", 0]
    return "the MASK is empty"


def empty_placeholder(graph):
    graph[node_of(graph, "RefCustom_DreamOTextEncode")]["inputs"]["text"] = "a toy from [ref#] on a desk"
    return "placeholder '[ref#]' is not valid"


def odd_sized_reference(graph):
    reference = node_of(graph, "RefCustom_DreamOReference")
    graph["tiny_image"] = {"class_type": "ImageScale", "inputs": {
        "image": graph[reference]["inputs"]["image"], "upscale_method": "nearest-exact", "width": 13, "height": 9,
        "crop": "disabled"}}
    graph[reference]["inputs"]["image"] = ["tiny_image", 0]
    return "needs at least 16 px a side"


def shared_attention_mask_count(graph):
    sampler = node_of(graph, "KSampler")
    graph["two_masks"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    graph["as_image"] = {"class_type": "MaskToImage", "inputs": {"mask": ["two_masks", 0]}}
    graph["repeated"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["as_image", 0], "amount": 2}}
    graph["masks"] = {"class_type": "ImageToMask", "inputs": {"image": ["repeated", 0], "channel": "red"}}
    graph["msa"] = {"class_type": "RefCustom_MaskedSharedAttention", "inputs": {
        "model": graph[sampler]["inputs"]["model"], "mask": ["masks", 0], "dilation": 9, "full_shared_steps": 1,
        "patch_negative": False}}
    graph[sampler]["inputs"]["model"] = ["msa", 0]
    return "got 2 masks for a batch of 1 images"


CASES = [too_many_references, non_flux_model, wrong_weight_file, mask_not_matching_image, empty_mask,
         empty_placeholder, odd_sized_reference, shared_attention_mask_count]
RAISED_WHILE_SAMPLING = {shared_attention_mask_count}


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_a_clear_node_error_and_the_server_keeps_serving(comfy_server, headless, case):
    graph = base_graph(headless)
    expected = case(graph)
    with pytest.raises(headless.PromptFailed) as failure:
        comfy_server.run(graph, timeout=120)
    assert expected in failure.value.exception_message, failure.value.exception_message
    if case in RAISED_WHILE_SAMPLING:  # our patch's check, reported by the sampler node that ran it
        assert failure.value.node_type == "KSampler", failure.value.node_type
    else:
        assert failure.value.node_type.startswith("RefCustom_"), failure.value.node_type

    entry = comfy_server.run(base_graph(headless), timeout=120)
    assert comfy_server.output_images(entry), "the server did not serve the next valid prompt"
