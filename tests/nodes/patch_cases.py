"""Every model-level patch of the pack, in-process: one function per patch that wires it onto a given MODEL
the way the shipped workflows do and samples two steps (tests/server/patch_matrix.py is the server's twin).

Each function takes (model, clip, vae) and returns the sampled latent; the MODEL may already carry core
LoRAs or a quantized or partly loaded state: that is what the tests vary. The DreamO and AlignGen files
come from the `models_dir` fixture (tests/nodes/conftest.py). Adding the next patch is one function and
one line in PATCH_CASES.
"""

from __future__ import annotations

import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths
import nodes as comfy_nodes
import torch
from comfy_extras.nodes_edit_model import ReferenceLatent

from refcustom.nodes.aligngen_conditioning import AlignGenConditioningNode
from refcustom.nodes.aligngen_loader import AlignGenLoader
from refcustom.nodes.dreamo_reference import DreamOReferenceNode
from refcustom.nodes.dreamo_text import DreamOTextEncode
from refcustom.nodes.normalized_guidance import GuidanceBranchesNode, NormalizedGuidanceGuiderNode
from refcustom.nodes.shared_attention import MaskedSharedAttentionNode, SharedAttentionReferenceNode
from refcustom.nodes.true_cfg_guider import TrueCFGGuiderNode
from refcustom.tests.fixtures.dreamo_files import USER_LORA_FILE
from refcustom.tests.nodes.aligngen_inputs import tiny_redux
from refcustom.tests.nodes.core_nodes import run_core_node
from refcustom.tests.nodes.dreamo_loading import load_dreamo

STEPS, LATENT = 2, 8  # 64 px
ALL_DREAMO_LORAS = {
    "cfg_distill_lora": "dreamo_cfg_distill.safetensors", "cfg_distill_strength": 1.0,
    "turbo_lora": "flux-turbo.safetensors", "turbo_strength": 1.0,
    "sft_lora": "v1.1/dreamo_sft_lora.safetensors", "sft_strength": 1.0,
    "dpo_lora": "v1.1/dreamo_dpo_lora.safetensors", "dpo_strength": 1.25,
    "quality_pos_lora": "dreamo_quality_lora_pos.safetensors", "quality_pos_strength": 0.15,
    "quality_neg_lora": "dreamo_quality_lora_neg.safetensors", "quality_neg_strength": -0.8,
}


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def reference_image(seed=1, height=48, width=64):
    return torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(seed))


def with_user_lora(model, strength=1.0):
    """`model` through core LoraLoaderModelOnly's path (comfy.sd.load_lora_for_models) with the user LoRA."""
    path = folder_paths.get_full_path_or_raise("loras", USER_LORA_FILE.split("/", 1)[1])
    return comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(path), strength, 0)[0]


def ksample(model, positive, negative, batch=1, cfg=1.0):
    latent = {"samples": torch.zeros(batch, 16, LATENT, LATENT)}
    (out,) = comfy_nodes.common_ksampler(model, 42, STEPS, cfg, "euler", "simple", positive, negative, latent)
    return out["samples"]


def guide(guider, model, batch=1):
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
    noise = torch.randn(batch, 16, LATENT, LATENT, generator=torch.Generator().manual_seed(42))
    return guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas, seed=42)


def plain(model, clip, vae):
    return ksample(model, encode(clip, "a red toy robot on a table"), encode(clip, ""))


def dreamo_all_loras(model, clip, vae):
    patched, dreamo = load_dreamo(model, **ALL_DREAMO_LORAS)
    (text,) = DreamOTextEncode.execute(clip, dreamo, "a toy from [ref#1] on a beach").args
    positive = DreamOReferenceNode.execute(text, vae, reference_image(), "ip", 64, 0, None).args[0]
    return ksample(patched, positive, encode(clip, ""))


def aligngen(model, clip, vae):
    patched, loaded = AlignGenLoader.execute(model, "aligngen_lora.safetensors", 1.0).args
    style_model, vision = tiny_redux(text_width=32)
    (positive,) = AlignGenConditioningNode.execute(clip, loaded, "a photo of a red guitar on a beach", "red guitar",
                                                   style_model, vision, vae, reference_image(), 64).args
    return ksample(patched, positive, encode(clip, ""))


def masked_shared_attention(model, clip, vae):
    masks = torch.zeros(2, 64, 64)
    masks[:, 16:48, 8:40] = 1.0
    (patched,) = MaskedSharedAttentionNode.execute(model, 3, 1, False, mask=masks).args
    return ksample(patched, encode(clip, "a red toy robot"), encode(clip, ""), batch=2)


def shared_attention_reference(model, clip, vae):
    (patched,) = SharedAttentionReferenceNode.execute(model, vae, reference_image(height=64), 3, 1, False, 0).args
    return ksample(patched, encode(clip, "a red toy robot"), encode(clip, ""), batch=2)


def true_cfg_guider(model, clip, vae):
    patched, dreamo = load_dreamo(model)
    (text,) = DreamOTextEncode.execute(clip, dreamo, "a portrait of [ref#1]").args
    positive = DreamOReferenceNode.execute(text, vae, reference_image(), "ip", 64, 0, None).args[0]
    (guider,) = TrueCFGGuiderNode.execute(patched, positive, encode(clip, "blurry"), 2.0, 0, 10000, 0.0).args
    return guide(guider, patched)


def normalized_guider(model, clip, vae):
    latent = vae.encode(reference_image()[..., :3])
    (positive,) = run_core_node(ReferenceLatent, conditioning=encode(clip, "make it a painting"),
                                latent={"samples": latent})
    image_only, negative = GuidanceBranchesNode.execute(positive, clip, "").args
    (guider,) = NormalizedGuidanceGuiderNode.execute(model, positive, image_only, negative, 2.0, 1.5, 1.0, True).args
    return guide(guider, model)


PATCH_CASES = {f.__name__: f for f in (dreamo_all_loras, aligngen, masked_shared_attention,
                                       shared_attention_reference, true_cfg_guider, normalized_guider)}
