"""Every patch of ours stays correct under ComfyUI's model management on one long-running server (tier 2).

For each case of patch_matrix.PATCH_CASES (Load DreamO with all its LoRAs, Load AlignGen, Masked Shared
Attention, Shared Attention Reference, the true-CFG and the normalized guiders) the session's server runs
sequences of graphs on one model object (the tiny FLUX every server test uses), and every image must equal
the same graph run on a fresh model object (`on_fresh_model`: a model no prompt has touched, what a freshly
started server would load). On the CPU in float32, and in fp8 with ComfyUI's own deterministic rounding,
ComfyUI is deterministic: the comparison is pixel for pixel, no tolerance.

- plain FLUX, ours, plain FLUX + a core LoraLoaderModelOnly, ours again (an AlignGen run once made the
  next LoRA graph come out without its LoRA, and stay so);
- each of our patches right after the others (in the listed order and reversed);
- a core LoRA before our node and after it, strengths 0 and 1 (0 = the graph without it, 1 = another image);
- the same model object used by our graph and by a plain + LoRA graph in one prompt;
- the first sequence again with UNETLoader's fp8_e4m3fn weights (cast per forward);
- a run that fails inside a sampling step, and one interrupted there (POST /interrupt), each followed by
  the plain graph and ours;
- ours, POST /free (ComfyUI unloads every model, the AlignGen DEM included), ours.
Partial loading (low VRAM) cannot be forced through a CPU server: tests/nodes/test_partial_loading.py.
"""

from __future__ import annotations

import io
import json

import pytest

from .patch_matrix import PATCH_CASES, merged, on_fresh_model, patch_graph, plain_graph
from .scripts import load_script

pytestmark = pytest.mark.tier2

api = load_script("api_example.py")
_fresh: dict[str, dict[str, list[bytes]]] = {}


def run(server, graph, timeout=300) -> dict[str, list[bytes]]:
    """SaveImage node id -> the decoded pixels of each image it saved."""
    from PIL import Image

    entry = server.run(graph, timeout=timeout)
    out: dict[str, list[bytes]] = {}
    for record, png in zip(server.output_images(entry), server.images(entry), strict=True):
        image = Image.open(io.BytesIO(png))
        out.setdefault(record["node_id"], []).append(image.size + (image.tobytes(),))
    assert out, f"the graph saved no image: {entry.get('status')}"
    return out


def fresh(server, graph) -> dict[str, list[bytes]]:
    """What `graph` gives on a model object no prompt has used (computed once per graph)."""
    key = json.dumps(graph, sort_keys=True)
    if key not in _fresh:
        _fresh[key] = run(server, on_fresh_model(graph))
    return _fresh[key]


def assert_as_fresh(server, graph, what: str) -> dict[str, list[bytes]]:
    images = run(server, graph)
    assert images == fresh(server, graph), f"{what}: the image differs from the same graph on a fresh model"
    return images


CASES = pytest.mark.parametrize("case", PATCH_CASES, ids=str)


@CASES
@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn"])
def test_plain_ours_plain_with_a_core_lora_ours(comfy_server, headless, case, weight_dtype):
    plain = plain_graph(weight_dtype=weight_dtype)
    with_lora = plain_graph(lora_strength=1.0, weight_dtype=weight_dtype)
    ours = patch_graph(headless, case, weight_dtype=weight_dtype)
    first = assert_as_fresh(comfy_server, plain, "plain FLUX")
    assert_as_fresh(comfy_server, ours, f"{case} after plain FLUX")
    lora_image = assert_as_fresh(comfy_server, with_lora, f"plain FLUX + core LoRA after {case}")
    assert lora_image != first, "the core LoRA changed nothing: it was not applied"
    assert_as_fresh(comfy_server, ours, f"{case} after plain FLUX + core LoRA")


@pytest.mark.parametrize("order", ["listed", "reversed"])
def test_each_patch_after_the_others(comfy_server, headless, order):
    """Our patches one after another on the same model (DreamO's LoRAs once vanished after an AlignGen run)."""
    cases = PATCH_CASES if order == "listed" else tuple(reversed(PATCH_CASES))
    for previous, case in zip((None, *cases), cases, strict=False):  # (None, first), (first, second), ...
        assert_as_fresh(comfy_server, patch_graph(headless, case), f"{case} right after {previous or 'the tests before'}")


# A LoRA can only come before a GUIDER; after the others too.
LORA_PLACES = [(case, where) for case in PATCH_CASES for where in ("before", "after") if where == "before" or case.outputs_model]


@pytest.mark.parametrize("case,where", LORA_PLACES, ids=[f"{where}-{case}" for case, where in LORA_PLACES])
def test_a_core_lora_before_or_after_ours(comfy_server, headless, case, where):
    without = fresh(comfy_server, patch_graph(headless, case))
    off = assert_as_fresh(comfy_server, patch_graph(headless, case, lora=(where, 0.0)), f"LoRA 0 {where} {case}")
    on = assert_as_fresh(comfy_server, patch_graph(headless, case, lora=(where, 1.0)), f"LoRA 1 {where} {case}")
    assert off == without, "a LoRA at strength 0 changed the image"
    assert on != off, f"the core LoRA {where} {case} changed nothing: it was not applied"


@CASES
def test_one_model_in_our_graph_and_a_plain_lora_graph_of_the_same_prompt(comfy_server, headless, case):
    ours, plain = patch_graph(headless, case), plain_graph(lora_strength=1.0, prefix="plain_")
    for node_id in ("1", "2", "3"):  # the shared loaders: same node, whatever the title
        plain[node_id]["_meta"] = ours[node_id].get("_meta", {})
    both = run(comfy_server, merged(ours, plain))
    expected = {**fresh(comfy_server, ours), **fresh(comfy_server, plain)}
    assert both == expected, f"{case} and plain + LoRA in one prompt differ from each run alone on fresh models"


@CASES
@pytest.mark.parametrize("how", ["exception", "interrupt"])
def test_a_failed_or_interrupted_run_leaves_nothing_behind(comfy_server, headless, case, how):
    """The probe stops sampling inside step 1's forward pass, while our patch is installed for that pass."""
    if how == "exception":
        broken = patch_graph(headless, case, probe={"mode": "raise", "step": 1, "timeout": 60.0})
        with pytest.raises(headless.PromptFailed, match="failing on purpose inside sampling step 1"):
            comfy_server.run(broken, timeout=300)
    else:
        broken = patch_graph(headless, case, probe={"mode": "wait_for_interrupt", "step": 1, "timeout": 60.0})
        interrupted, events = [], []

        def interrupt_after_step_one(event):
            events.append(event["type"])
            if event["type"] == "progress" and event["data"]["value"] >= 1 and not interrupted:
                interrupted.append(comfy_server.request("POST", "/interrupt", b"{}")[0])

        with pytest.raises(api.NodeError):
            api.run(comfy_server.url, broken, on_progress=interrupt_after_step_one, timeout=300)
        assert interrupted == [200] and "execution_interrupted" in events, (interrupted, events)
    assert_as_fresh(comfy_server, plain_graph(), f"plain FLUX after {case} was stopped by an {how}")
    assert_as_fresh(comfy_server, plain_graph(lora_strength=1.0), f"plain + LoRA after {case}'s {how}")
    assert_as_fresh(comfy_server, patch_graph(headless, case), f"{case} after its own {how}")


@CASES
def test_free_between_two_runs(comfy_server, headless, case):
    """POST /free unloads every model ComfyUI manages (AlignGen's DEM too); the next run loads them again."""
    ours = patch_graph(headless, case)
    assert_as_fresh(comfy_server, ours, f"{case}")
    status, _ = comfy_server.request("POST", "/free", json.dumps({"unload_models": True, "free_memory": True}).encode(),
                                     {"Content-Type": "application/json"})
    assert status == 200
    # ComfyUI acts on /free between two prompts of its queue: one more prompt, and the next one runs after it.
    comfy_server.run(NOTHING_MUCH, timeout=60)
    assert_as_fresh(comfy_server, ours, f"{case} after /free")


NOTHING_MUCH = {  # a prompt that runs no model
    "1": {"class_type": "RefCustomTest_TinyVAELoader", "inputs": {"seed": 0}},
    "2": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}},
    "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}},
    "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
}
