"""Every shipped API workflow driven the way a user drives it headless (scripts/api_example.py): new prompt,
an uploaded reference, a seed, progress over the WebSocket, images over HTTP; then one bad input per
workflow, which must come back as ComfyUI's node error raised by our node with our message, after which the
same server runs the good graph again (tier 2, headless server, tiny fixture models)."""

from __future__ import annotations

import io
import json

import pytest

from . import shipped_workflows
from .scripts import load_script
from .shipped_workflows import API_WORKFLOWS, WORKFLOWS, node_of

pytestmark = pytest.mark.tier2

INPUTS = WORKFLOWS / "inputs"
SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
STEPS = 2
SEED = 1234
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


api = load_script("api_example.py")


def cheap_graph(headless, workflow):
    return shipped_workflows.cheap_graph(headless, workflow, STEPS)


def mirrored_input(graph):
    """A new reference image: the first LoadImage's workflows/inputs/ image, mirrored."""
    from PIL import Image

    image = Image.open(INPUTS / graph[node_of(graph, "LoadImage")]["inputs"]["image"]).convert("RGB")
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def plain_image(width, height):
    from PIL import Image

    return Image.new("RGB", (width, height), (200, 90, 40))


# ---- one bad input per workflow: each edits the graph and returns (node type that must fail, message fragments) ----

def aligngen_dreamo_file_as_aligngen_file(graph, upload):
    # tests/server/conftest.py puts dreamo.safetensors in models/loras/ too, which Load AlignGen lists.
    graph[node_of(graph, "RefCustom_AlignGenLoader")]["inputs"]["aligngen_file"] = "dreamo.safetensors"
    return "RefCustom_AlignGenLoader", ["dreamo.safetensors is not an AlignGen file",
                                        "It is a DreamO file: load it with Load DreamO (FLUX)"]


def aligngen_prompt_without_concept(graph, upload):
    api.set_prompt(graph, "a photo of a violin on a beach at sunset")  # the concept is 'acoustic guitar'
    return "RefCustom_AlignGenConditioning", ["does not contain the concept name 'acoustic guitar'",
                                              "write the concept name in the prompt"]


def dreamo_placeholder_off_by_one(graph, upload):
    api.set_prompt(graph, "a portrait photo of a person from [ref#0] reading a book")
    return "RefCustom_DreamOTextEncode", ["placeholder '[ref#0]' is not valid", "write [ref#1] .. [ref#9]"]


def dreamo_uploaded_reference_too_small(graph, upload):
    api.set_reference(graph, upload(plain_image(13, 9), "api_test_13x9.png"), 1)
    return "RefCustom_DreamOReference", ["reference image is 13x9 px; it needs at least 16 px a side"]


def dreamo_uploaded_reference_too_narrow(graph, upload):
    api.set_reference(graph, upload(plain_image(400, 16), "api_test_400x16.png"), 2)
    return "RefCustom_DreamOReference", ["a 400x16 reference is too narrow for ref_res 64",
                                         "Crop it closer to square or raise ref_res"]


def dreamo_kontext_layout_after_reference(graph, upload):
    guidance = node_of(graph, "FluxGuidance")
    graph["kontext_method"] = {"class_type": "FluxKontextMultiReferenceLatentMethod", "inputs": {
        "conditioning": graph[guidance]["inputs"]["conditioning"], "reference_latents_method": "index"}}
    graph[guidance]["inputs"]["conditioning"] = ["kontext_method", 0]
    # Our DreamO model wrapper checks the layout when the model runs: the sampler node reports it.
    return "SamplerCustomAdvanced", ["DreamO references need the diagonal reference layout ('uxo')",
                                     "conditioning uses 'index'"]


def dreamo_style_with_mask(graph, upload):
    graph["style_mask"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    graph[node_of(graph, "RefCustom_DreamOReference")]["inputs"]["mask"] = ["style_mask", 0]
    return "RefCustom_DreamOReference", ["style references take no MASK", "pick task ip / try-on"]


def dreamo_garment_mask_wrong_size(graph, upload):
    graph["garment_mask"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 40, "height": 24}}
    graph[node_of(graph, "RefCustom_DreamOReference", 1)]["inputs"]["mask"] = ["garment_mask", 0]
    return "RefCustom_DreamOReference", ["the MASK is 40x24 but its reference image is", "use the mask made from this image"]


def dreamo_turbo_lora_as_dreamo_file(graph, upload):
    graph[node_of(graph, "RefCustom_DreamOLoader")]["inputs"]["dreamo_file"] = "flux-turbo.safetensors"
    return "RefCustom_DreamOLoader", ["flux-turbo.safetensors holds no DreamO embedding tables",
                                      "set embedding_file to embedding.safetensors"]


def kontext_branches_given_another_prompt(graph, upload):
    instruction = node_of(graph, "CLIPTextEncode")
    graph["other_prompt"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": graph[instruction]["inputs"]["clip"],
                                                                        "text": "a completely different instruction"}}
    graph[node_of(graph, "RefCustom_GuidanceBranches")]["inputs"]["prompt"] = ["other_prompt", 0]
    return "RefCustom_GuidanceBranches", ["the `prompt` input is not the text this conditioning was built from"]


def syncd_masks_do_not_match_batch(graph, upload):
    graph[node_of(graph, "RepeatImageBatch")]["inputs"]["amount"] = 3  # the batch is 4
    # Our attention patch checks the mask count when sampling starts: the sampler node reports it.
    return "KSampler", ["Masked Shared Attention got 3 masks for a batch of 4 images", "give one MASK per image"]


def syncd_reference_mask_wrong_size(graph, upload):
    graph["reference_mask"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 40, "height": 24}}
    graph[node_of(graph, "RefCustom_SharedAttentionReference")]["inputs"]["reference_mask"] = ["reference_mask", 0]
    return "RefCustom_SharedAttentionReference", ["the reference mask is 40x24 but the reference is",
                                                  "use the mask of this image"]


BAD_INPUTS = {
    "aligngen_normalized_guidance": aligngen_dreamo_file_as_aligngen_file,
    "aligngen_single_concept": aligngen_prompt_without_concept,
    "dreamo_id": dreamo_placeholder_off_by_one,
    "dreamo_ip": dreamo_uploaded_reference_too_small,
    "dreamo_multi_reference": dreamo_uploaded_reference_too_narrow,
    "dreamo_normalized_guidance": dreamo_kontext_layout_after_reference,
    "dreamo_style": dreamo_style_with_mask,
    "dreamo_tryon": dreamo_garment_mask_wrong_size,
    "dreamo_turbo": dreamo_turbo_lora_as_dreamo_file,
    "kontext_normalized_guidance": kontext_branches_given_another_prompt,
    "syncd_consistent_batch": syncd_masks_do_not_match_batch,
    "syncd_reference": syncd_reference_mask_wrong_size,
}


# ---- helpers ----

def uploader(server, tmp_path):
    def upload(image, name):
        path = tmp_path / name
        image.save(path)
        uploaded = api.upload_image(server.url, path)
        assert uploaded == name, uploaded
        return uploaded
    return upload


def assert_sampler_progress(events, graph):
    """The sampler reported every step over the WebSocket, and the prompt ended in execution_success."""
    types = [e["type"] for e in events]
    assert types[0] == "execution_start" and types[-2:] == ["execution_success", "executing"], types
    assert events[-1]["data"]["node"] is None, events[-1]
    samplers = [k for k, v in graph.items() if v["class_type"] in SAMPLERS]
    assert samplers, f"no sampler of {SAMPLERS} in the graph"
    for sampler in samplers:
        steps = [(e["data"]["value"], e["data"]["max"]) for e in events
                 if e["type"] == "progress" and e["data"]["node"] == sampler]
        assert steps and steps[-1] == (STEPS, STEPS) and all(m == STEPS for _, m in steps), (sampler, steps)


# Our nodes that tick ComfyUI's progress bar (issue 8 point 5): what the page's node bar and the
# WebSocket's `progress` messages show while they work. (Shared Attention Reference does no long work
# itself: its references are encoded when sampling starts, at the sampled size.)
PROGRESS_NODES = {"RefCustom_DreamOLoader", "RefCustom_DreamOReference", "RefCustom_AlignGenLoader",
                  "RefCustom_AlignGenConditioning"}


def assert_our_progress(events, graph):
    """Each of our progress-reporting nodes that ran (not cached) sent progress over the WebSocket up to
    its total. Returns how many such nodes ran."""
    ran = {e["data"]["node"] for e in events if e["type"] == "executing" and e["data"].get("node")}
    checked = 0
    for node_id, node in graph.items():
        if node["class_type"] in PROGRESS_NODES and node_id in ran:
            ticks = [(e["data"]["value"], e["data"]["max"]) for e in events
                     if e["type"] == "progress" and e["data"]["node"] == node_id]
            assert ticks and ticks[-1][0] == ticks[-1][1], (node_id, node["class_type"], ticks)
            checked += 1
    return checked


def assert_pngs(images, graph):
    """One PNG per latent of the batch, of the shrunk latent size."""
    from PIL import Image

    [latent] = [v["inputs"] for v in graph.values()
                if v["class_type"].startswith("Empty") and "Latent" in v["class_type"]]
    size, batch = (latent["width"], latent["height"]), latent["batch_size"]
    assert max(size) == 64, size  # shrunk
    assert len(images) == batch, [name for name, _ in images]
    for name, data in images:
        assert name.endswith(".png") and data.startswith(PNG_SIGNATURE), name
        assert Image.open(io.BytesIO(data)).size == size, name


def pixels(images):
    from PIL import Image

    return [Image.open(io.BytesIO(data)).tobytes() for _, data in images]


# ---- tests ----

def test_every_api_workflow_has_a_bad_input_case():
    missing = sorted({w.stem for w in API_WORKFLOWS} - set(BAD_INPUTS))
    assert not missing, f"add a bad-input case for {missing} to BAD_INPUTS in {__file__}"
    assert len(API_WORKFLOWS) >= 12


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=[w.stem for w in API_WORKFLOWS])
def test_api_workflow_runs_headless_and_a_bad_input_is_our_node_error(comfy_server, headless, workflow, tmp_path):
    bad_input = BAD_INPUTS.get(workflow.stem)
    if bad_input is None:
        pytest.fail(f"{workflow.name} has no bad-input case: add one to BAD_INPUTS in {__file__}")
    server, upload = comfy_server.url, uploader(comfy_server, tmp_path)

    # A good run: new prompt (placeholders and concept name kept), an uploaded reference, a seed.
    graph = cheap_graph(headless, workflow)
    [prompt_node] = api.find_prompt_nodes(graph)
    assert "negative" not in graph[prompt_node].get("_meta", {}).get("title", "").lower()
    text = graph[prompt_node]["inputs"]["text"] + ", seen through a window"
    assert api.set_prompt(graph, text) == [prompt_node]
    reference = None
    if any(v["class_type"] == "LoadImage" for v in graph.values()):
        name = upload(mirrored_input(graph), f"api_test_{workflow.stem}.png")
        reference = api.set_reference(graph, name, 1)
    assert api.set_seed(graph, SEED)
    seen = []
    prompt_id, events = api.run(server, graph, on_progress=seen.append, timeout=300)
    assert seen == events
    assert_sampler_progress(events, graph)
    # The reference node reruns (a new upload); cached loaders send nothing, which is right.
    if any(v["class_type"] in PROGRESS_NODES for v in graph.values()) and reference is not None:
        assert assert_our_progress(events, graph) >= 1, [e for e in events if e["type"] == "executing"]
    queued = api.get_history(server, prompt_id)["prompt"][2]
    assert queued[prompt_node]["inputs"]["text"] == text
    if reference is not None:
        assert queued[reference]["inputs"]["image"] == f"api_test_{workflow.stem}.png"
    images = api.fetch_images(server, prompt_id)
    assert_pngs(images, graph)

    # The bad input: ComfyUI's node error, raised by our node, with our message.
    bad = json.loads(json.dumps(graph))
    node_type, fragments = bad_input(bad, upload)
    with pytest.raises(api.NodeError) as failure:
        api.run(server, bad, timeout=300)
    error = failure.value
    assert error.node_type == node_type and bad[error.node_id]["class_type"] == node_type, str(error)
    assert all(fragment in error.exception_message for fragment in fragments), error.exception_message

    # The server keeps serving: the good graph runs again (the sampler really runs) and, same seed, same bytes.
    prompt_id, events = api.run(server, graph, timeout=300)
    assert_sampler_progress(events, graph)
    again = api.fetch_images(server, prompt_id)
    assert_pngs(again, graph)
    assert not {name for name, _ in again} & {name for name, _ in images}, "no new image files were saved"
    assert [data for _, data in again] == [data for _, data in images], "same graph and seed, different images"


def test_the_seed_changes_the_image(comfy_server, headless):
    graph = cheap_graph(headless, WORKFLOWS / "api" / "dreamo_ip.json")
    runs = []
    for seed in (1, 2):
        api.set_seed(graph, seed)
        prompt_id, _ = api.run(comfy_server.url, graph, timeout=300)
        runs.append(pixels(api.fetch_images(comfy_server.url, prompt_id)))
    assert runs[0] != runs[1]


def test_a_graph_that_fails_validation_is_rejected_with_comfyui_node_errors(comfy_server, headless):
    graph = cheap_graph(headless, WORKFLOWS / "api" / "dreamo_ip.json")
    loader = api.set_reference(graph, "api_test_never_uploaded.png", 1)
    with pytest.raises(api.PromptRejected) as failure:
        api.run(comfy_server.url, graph, timeout=60)
    assert list(failure.value.node_errors) == [loader], failure.value.node_errors
    assert "api_test_never_uploaded.png" in str(failure.value)


def test_graph_rules_name_what_they_cannot_find():
    graph = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    with pytest.raises(ValueError, match="no positive prompt found"):
        api.set_prompt(graph, "x")
    with pytest.raises(ValueError, match="this workflow has 0 LoadImage node"):
        api.set_reference(graph, "x.png", 1)
    with pytest.raises(ValueError, match="no seed in this workflow"):
        api.set_seed(graph, 1)
