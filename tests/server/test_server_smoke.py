"""The pack inside a real headless ComfyUI: it imports cleanly, registers its nodes, every shipped
workflow runs end to end on the tiny fixture models, and the server survives failing prompts (tier 2)."""

from __future__ import annotations

import io
import json
import os
import re

import pytest

from refcustom.tests.comfy_host import REPO_ROOT

from .shipped_workflows import API_WORKFLOWS, UI_WORKFLOWS

pytestmark = pytest.mark.tier2

FIXTURE_NODES = {"RefCustomTest_TinyFluxLoader", "RefCustomTest_TinyCLIPLoader", "RefCustomTest_TinyVAELoader",
                 "RefCustomTest_TinyNonFluxLoader", "RefCustomTest_TinyReduxLoader",
                 "RefCustomTest_TinyCLIPVisionLoader"}
# Node types the frontend handles itself; they never reach the server.
FRONTEND_ONLY_NOT_IN_OBJECT_INFO = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def ids(paths):
    return [p.stem for p in paths]


def run_and_check(server, graph, timeout=300):
    """Run `graph`, fetch its images, check every one; returns [(record, PIL image)]."""
    import numpy as np
    from PIL import Image

    log_start = len(server.log_text())
    entry = server.run(graph, timeout=timeout)
    records = server.output_images(entry)
    assert records, "the prompt produced no images"
    images = []
    for record, data in zip(records, server.images(entry), strict=True):
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{record['filename']} is not a PNG"
        image = Image.open(io.BytesIO(data))
        image.load()
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        assert pixels.std() > 1.0, f"{record['filename']} is a constant image"
        images.append((record, image))
    new_log = server.log_text()[log_start:]
    # SaveImage casts float pixels to uint8: a NaN makes numpy warn (printed every time on this server).
    assert "invalid value encountered" not in new_log, f"NaN/inf reached an image:\n{new_log[-2000:]}"
    return images


def decoded_by_vae(graph, node_id) -> bool:
    source = graph.get(node_id, {}).get("inputs", {}).get("images")
    return isinstance(source, list) and graph.get(source[0], {}).get("class_type") in ("VAEDecode", "VAEDecodeTiled")


def tiny_graph(width=64, height=48, steps=2, text="a red toy car"):
    """Core nodes only, on the fixture loaders: the smallest FLUX text-to-image graph."""
    return {
        "1": {"class_type": "RefCustomTest_TinyFluxLoader", "inputs": {"seed": 0}},
        "2": {"class_type": "RefCustomTest_TinyCLIPLoader", "inputs": {"seed": 0}},
        "3": {"class_type": "RefCustomTest_TinyVAELoader", "inputs": {"seed": 0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": text}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": ""}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0], "seed": 1,
            "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "refcustom_test/tiny"}},
    }


# ---- the pack loads ----

def test_pack_imported_without_errors(comfy_server):
    log = comfy_server.startup_log  # later prompts may fail on purpose (tests/server/test_bad_input_table.py)
    pack_dir = comfy_server.base_dir / "custom_nodes" / "refcustom"
    import_lines = [line for line in log.splitlines() if line.rstrip().endswith(str(pack_dir))]
    assert import_lines, f"no import-time line for {pack_dir} in the log:\n{comfy_server.log_tail()}"
    assert not [line for line in import_lines if "IMPORT FAILED" in line], "\n".join(import_lines)
    assert "IMPORT FAILED" not in log
    # No traceback anywhere in the log may mention the pack (by its link or by the checkout's real path).
    for block in re.split(r"(?m)^(?=Traceback )", log)[1:]:
        block = block[:4000]
        assert str(pack_dir) not in block and str(REPO_ROOT) not in block, f"traceback from the pack:\n{block}"


def test_pack_nodes_are_registered(comfy_server):
    info = comfy_server.object_info()
    ours = sorted(name for name in info if name.startswith("RefCustom"))
    assert FIXTURE_NODES <= set(ours), ours
    for name in FIXTURE_NODES:
        assert info[name]["category"] == "refcustom/testing"
    assert [name for name in ours if name not in FIXTURE_NODES], f"the pack registered no real nodes: {ours}"


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=ids(UI_WORKFLOWS))
def test_ui_workflow_node_types_exist(comfy_server, workflow):
    data = json.loads(workflow.read_text())
    if not isinstance(data.get("nodes"), list):
        pytest.skip(f"{workflow.name} is not a UI-format workflow")
    subgraphs = data.get("definitions", {}).get("subgraphs", [])
    subgraph_ids = {sg.get("id") for sg in subgraphs}
    nodes = list(data["nodes"]) + [n for sg in subgraphs for n in sg.get("nodes", [])]
    types = {n["type"] for n in nodes} - subgraph_ids - FRONTEND_ONLY_NOT_IN_OBJECT_INFO
    missing = sorted(types - set(comfy_server.object_info()))
    assert not missing, f"{workflow.name} uses node types this server does not have: {missing}"


# ---- prompts run ----

def test_tiny_fixture_graph_renders(comfy_server):
    graph = tiny_graph(width=64, height=48)
    [(record, image)] = run_and_check(comfy_server, graph)
    assert image.size == (64, 48) and image.format == "PNG"


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=ids(API_WORKFLOWS))
def test_api_workflow_runs_on_tiny_models(comfy_server, headless, workflow):
    original = json.loads(workflow.read_text())
    assert not headless.is_ui_workflow(original), f"{workflow} is UI format; workflows/api/ holds API format"
    for name in headless.load_image_names(original):
        assert (comfy_server.base_dir / "input" / name).is_file(), f"{name} is not in workflows/inputs/"
    graph = headless.shrink_graph(headless.substitute_fixture_loaders(original))
    size = headless.latent_size(graph)
    for record, image in run_and_check(comfy_server, graph):
        if size is not None and decoded_by_vae(graph, record["node_id"]):
            width, height = size
            assert image.size == (width // 8 * 8, height // 8 * 8), (record, image.size, size)


FULL_SIZE_MAX_STEPS = 4


@pytest.mark.skipif(os.environ.get("REFCUSTOM_SKIP_FULL_SIZE") == "1", reason="REFCUSTOM_SKIP_FULL_SIZE=1")
@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=ids(API_WORKFLOWS))
def test_api_workflow_runs_at_its_own_size(comfy_server, headless, workflow):
    """At the shipped size (1024x1024 latents, references at the shipped ref_res / Kontext's 1 MP); only the
    model loaders are substituted. Steps are capped at 4: this pass is about sizes (token counts, id layouts,
    mask grids at full resolution); step-dependent behaviour (full_shared_steps, guidance ramps) is tested
    in tests/nodes, and 20-28 steps at 1024 px made this pass three quarters of the CI time."""
    graph = headless.substitute_fixture_loaders(json.loads(workflow.read_text()))
    graph = headless.shrink_graph(graph, max_side=1 << 30, caps={"steps": FULL_SIZE_MAX_STEPS})
    width, height = headless.latent_size(graph)
    batch = next(n["inputs"]["batch_size"] for n in graph.values() if n["class_type"] == "EmptySD3LatentImage")
    images = run_and_check(comfy_server, graph, timeout=900)
    assert [image.size for _, image in images] == [(width, height)] * batch


def test_tiny_redux_and_siglip_work_with_core_nodes(comfy_server):
    """The Redux/SigLIP fixtures through core's own path: CLIPVisionEncode (crop none) -> StyleModelApply."""
    graph = tiny_graph(width=64, height=48)
    graph["10"] = {"class_type": "RefCustomTest_TinyCLIPVisionLoader", "inputs": {"seed": 0}}
    graph["11"] = {"class_type": "RefCustomTest_TinyReduxLoader", "inputs": {"seed": 0}}
    graph["12"] = {"class_type": "LoadImage", "inputs": {"image": "refcustom_guitar.png"}}
    graph["13"] = {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["10", 0], "image": ["12", 0],
                                                                "crop": "none"}}
    graph["14"] = {"class_type": "StyleModelApply", "inputs": {
        "conditioning": ["4", 0], "style_model": ["11", 0], "clip_vision_output": ["13", 0], "strength": 1.0,
        "strength_type": "multiply"}}
    graph["7"]["inputs"]["positive"] = ["14", 0]
    [(_, image)] = run_and_check(comfy_server, graph)
    assert image.size == (64, 48)


def test_image_upload_round_trip(comfy_server):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(buffer, format="PNG")
    answer = comfy_server.upload_image(buffer.getvalue(), "refcustom_upload_test.png")
    assert answer["name"] == "refcustom_upload_test.png"
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": answer["name"]}},
        "2": {"class_type": "RefCustomTest_TinyVAELoader", "inputs": {"seed": 0}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 0]}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["2", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "refcustom_test/upload"}},
    }
    [(_, image)] = run_and_check(comfy_server, graph)
    assert image.size == (56, 40)  # already a multiple of 8: no crop


# ---- failures are reported and the server goes on ----

def test_server_survives_failing_prompts(comfy_server, headless):
    # Rejected at validation: ComfyUI's node_errors come back on the exception.
    bad_input = tiny_graph()
    bad_input["7"]["inputs"]["sampler_name"] = "no_such_sampler"
    with pytest.raises(headless.PromptRejected) as rejected:
        comfy_server.queue(bad_input)
    assert "7" in rejected.value.node_errors
    assert "sampler_name" in str(rejected.value)

    # Accepted, then fails while executing: a 4-channel SD latent into the 16-channel VAE.
    runtime_error = {
        "1": {"class_type": "RefCustomTest_TinyVAELoader", "inputs": {"seed": 0}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "refcustom_test/bad"}},
    }
    with pytest.raises(headless.PromptFailed) as failed:
        comfy_server.run(runtime_error, timeout=120)
    assert failed.value.node_type == "VAEDecode" and failed.value.node_id == "3"
    assert failed.value.exception_message and "VAEDecode" in str(failed.value)

    # The next valid prompt is served normally.
    [(_, image)] = run_and_check(comfy_server, tiny_graph(width=48, height=32, text="after the errors"))
    assert image.size == (48, 32)
    assert comfy_server.alive()
