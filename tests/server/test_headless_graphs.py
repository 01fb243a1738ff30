"""scripts/headless.py's graph helpers on hand-written API graphs: no ComfyUI needed (runs in tier 1 too)."""

from __future__ import annotations

import pytest

FLUX, CLIP, VAE = "RefCustomTest_TinyFluxLoader", "RefCustomTest_TinyCLIPLoader", "RefCustomTest_TinyVAELoader"


def separate_loaders_graph():
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_fp16.safetensors",
                                                         "clip_name2": "clip_l.safetensors", "type": "flux"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "x"}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 768, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["4", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "steps": 25, "seed": 1}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["3", 0]}},
        "8": {"class_type": "LoadImage", "inputs": {"image": "refcustom_subject.png"}},
    }


def test_separate_loaders_become_fixture_nodes_with_the_same_ids(headless):
    original = separate_loaders_graph()
    graph = headless.substitute_fixture_loaders(original, seed=3)
    assert {k: graph[k]["class_type"] for k in "123"} == {"1": FLUX, "2": CLIP, "3": VAE}
    assert all(graph[k]["inputs"] == {"seed": 3} for k in "123")
    assert graph["6"]["inputs"]["model"] == ["1", 0] and graph["7"]["inputs"]["vae"] == ["3", 0]
    assert original["1"]["class_type"] == "UNETLoader"  # the input graph is not modified
    assert set(graph) == set(original)


def test_unet_loader_fp8_weight_dtype_carries_over(headless):
    original = separate_loaders_graph()
    original["1"]["inputs"]["weight_dtype"] = "fp8_e4m3fn"
    graph = headless.substitute_fixture_loaders(original, seed=3)
    assert graph["1"]["inputs"] == {"seed": 3, "weight_dtype": "fp8_e4m3fn"}
    assert graph["2"]["inputs"] == graph["3"]["inputs"] == {"seed": 3}


def test_checkpoint_loader_outputs_are_rewired(headless):
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-dev-fp8.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "x"}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }
    out = headless.substitute_fixture_loaders(graph)
    assert out["4"]["class_type"] == FLUX
    assert out["4_tiny_clip"]["class_type"] == CLIP and out["4_tiny_vae"]["class_type"] == VAE
    assert out["6"]["inputs"]["clip"] == ["4_tiny_clip", 0]
    assert out["3"]["inputs"]["model"] == ["4", 0]
    assert out["8"]["inputs"]["vae"] == ["4_tiny_vae", 0]


def test_redux_and_clip_vision_loaders_become_fixture_nodes(headless):
    graph = {
        "1": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": "flux1-redux-dev.safetensors"}},
        "2": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "sigclip_vision_patch14_384.safetensors"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "refcustom_guitar.png"}},
        "4": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["2", 0], "image": ["3", 0], "crop": "none"}},
        "5": {"class_type": "RefCustom_AlignGenConditioning", "inputs": {"style_model": ["1", 0],
                                                                         "clip_vision_output": ["4", 0]}},
    }
    out = headless.substitute_fixture_loaders(graph, seed=2)
    assert out["1"] == {"class_type": "RefCustomTest_TinyReduxLoader", "inputs": {"seed": 2},
                        "_meta": {"title": "StyleModelLoader (tiny fixture)"}}
    assert out["2"]["class_type"] == "RefCustomTest_TinyCLIPVisionLoader" and out["2"]["inputs"] == {"seed": 2}
    assert out["4"]["inputs"]["clip_vision"] == ["2", 0] and out["5"]["inputs"]["style_model"] == ["1", 0]
    assert set(out) == set(graph)


def test_loaders_without_a_substitute_are_refused(headless):
    with pytest.raises(ValueError, match="TripleCLIPLoader has no tiny fixture substitute"):
        headless.substitute_fixture_loaders({"1": {"class_type": "TripleCLIPLoader", "inputs": {}}})


def test_shrink_graph_caps_size_steps_and_reference_resolution(headless):
    graph = separate_loaders_graph()
    graph["9"] = {"class_type": "RefCustom_DreamOReference", "inputs": {"ref_res": 512, "index": 0}}
    small = headless.shrink_graph(graph, max_side=128)
    assert small["5"]["inputs"] == {"width": 128, "height": 96, "batch_size": 1}
    assert small["6"]["inputs"]["steps"] == 2 and small["9"]["inputs"]["ref_res"] == 128
    assert graph["5"]["inputs"]["width"] == 1024  # a copy
    assert headless.latent_size(small) == (128, 96)
    assert headless.shrink_graph(graph, max_side=64, caps={"steps": 1})["9"]["inputs"]["ref_res"] == 512


def test_graph_queries(headless):
    graph = separate_loaders_graph()
    assert headless.load_image_names(graph) == ["refcustom_subject.png"]
    assert headless.latent_size(graph) == (1024, 768)
    graph["10"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}}
    assert headless.latent_size(graph) is None  # two different sizes: no single answer
    assert headless.is_ui_workflow({"nodes": [], "links": []}) and not headless.is_ui_workflow(graph)


def test_prompt_rejected_carries_comfyui_node_errors(headless):
    node_errors = {"7": {"class_type": "KSampler", "errors": [
        {"type": "value_not_in_list", "message": "Value not in list", "details": "sampler_name: 'x' not in [...]"}]}}
    exc = headless.PromptRejected({"type": "prompt_outputs_failed_validation",
                                   "message": "Prompt outputs failed validation"}, node_errors)
    assert exc.node_errors == node_errors
    assert "node 7 (KSampler): Value not in list: sampler_name" in str(exc)
    failed = headless.PromptFailed("abc", {"node_id": "3", "node_type": "VAEDecode", "exception_type": "RuntimeError",
                                           "exception_message": "bad channels", "traceback": ["line 1\n", "line 2\n"]}, {})
    assert (failed.node_id, failed.node_type, failed.traceback) == ("3", "VAEDecode", "line 1\nline 2\n")
    assert "VAEDecode" in str(failed) and "bad channels" in str(failed)
