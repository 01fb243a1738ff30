"""SynCD normalized guidance inside ComfyUI sampling (tier 2, in-process)."""

import comfy.samplers
import pytest
import torch

from refcustom.nodes.dreamo_patch import DREAMO_COND_KEY
from refcustom.nodes.dreamo_reference import DreamOReferenceNode
from refcustom.nodes.normalized_guidance import GuidanceBranchesNode, NormalizedGuidanceGuiderNode
from refcustom.tests.fixtures.guidance_reference import numpy_normalized_guidance
from refcustom.tests.nodes.dreamo_loading import load_dreamo

BATCH = 2
MARKERS = {"positive": 1.0, "image_only": 2.0, "negative": 3.0}


def marker_cond(value, tokens=4, width=32):
    return [[torch.full((1, tokens, width), value), {"pooled_output": torch.zeros(1, 32)}]]



def known_branch_model(model, known):
    """The model's denoised output is `known[branch][sample]`, the branch read off the text marker."""
    patched = model.clone()
    calls = []

    def wrapper(apply_model, args):
        text = args["c"]["c_crossattn"]
        calls.append(text.shape[0])
        rows = []
        for row in range(text.shape[0]):
            value = float(text[row].mean())
            branch = next(name for name, marker in MARKERS.items() if abs(marker - value) < 1e-3)
            rows.append(known[branch][row % BATCH])
        return torch.stack(rows)

    patched.set_model_unet_function_wrapper(wrapper)
    return patched, calls


def sample_guider(model, sigmas, text_scale=3.0, image_scale=2.0, increase=4.0, normalize=True):
    (guider,) = NormalizedGuidanceGuiderNode.execute(
        model, marker_cond(1.0), marker_cond(2.0), marker_cond(3.0), text_scale, image_scale, increase, normalize
    ).args
    noise = torch.randn(BATCH, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    sampler = comfy.samplers.sampler_object("euler")
    return guider.sample(noise, torch.zeros_like(noise), sampler, torch.tensor(sigmas), seed=0)


@pytest.fixture
def known():
    g = torch.Generator().manual_seed(11)
    e0 = torch.randn(BATCH, 16, 4, 4, generator=g)
    ei = e0 + torch.randn(BATCH, 16, 4, 4, generator=g) * torch.tensor([8.0, 0.2]).view(2, 1, 1, 1)
    eit = ei + torch.randn(BATCH, 16, 4, 4, generator=g)
    return {"negative": e0, "image_only": ei, "positive": eit}


@pytest.mark.parametrize("normalize", [True, False])
def test_combined_x0_is_exact_for_known_branches(tiny_flux, known, normalize):
    model, calls = known_branch_model(tiny_flux, known)
    # One Euler step from sigma 1 to 0 returns the guided x0; progress 0, so s_I = image_scale.
    out = sample_guider(model, [1.0, 0.0], normalize=normalize)
    expected = numpy_normalized_guidance(known["negative"], known["image_only"], known["positive"], 2.0, 3.0, normalize)
    expected = model.model.process_latent_out(torch.from_numpy(expected).float())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # Same shapes everywhere: ComfyUI batched all three branches into one model call.
    assert calls == [3 * BATCH]


def test_image_scale_ramps_over_sampling(tiny_flux, known):
    model, _ = known_branch_model(tiny_flux, known)
    # Euler 1 -> 0.5 -> 0: the result is the x0 of the last step, taken at sigma 0.5 = halfway (FLUX t = sigma).
    out = sample_guider(model, [1.0, 0.5, 0.0], image_scale=2.0, increase=4.0)
    expected = numpy_normalized_guidance(known["negative"], known["image_only"], known["positive"], 2.0 + 0.5 * 4.0, 3.0)
    torch.testing.assert_close(out, model.model.process_latent_out(torch.from_numpy(expected).float()),
                               rtol=1e-5, atol=1e-5)


def test_branches_node_keeps_references_only_where_they_belong(tiny_clip, tiny_vae, tiny_flux, models_dir):
    prompt = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize("a toy from [ref#1] on a beach"))
    positive, _ = DreamOReferenceNode.execute(prompt, tiny_vae, torch.rand(1, 64, 64, 3), "ip", 64, 0, None).args
    positive = [[positive[0][0], {**positive[0][1], "guidance": 4.5}]]
    image_only, negative = GuidanceBranchesNode.execute(positive, tiny_clip, "", None).args
    neutral = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize(""))

    torch.testing.assert_close(image_only[0][0], neutral[0][0])
    torch.testing.assert_close(image_only[0][1]["pooled_output"], neutral[0][1]["pooled_output"])
    assert image_only[0][1]["reference_latents"] is positive[0][1]["reference_latents"]
    assert DREAMO_COND_KEY in image_only[0][1]["model_conds"]
    assert image_only[0][1]["guidance"] == 4.5 and negative[0][1]["guidance"] == 4.5
    assert "reference_latents" not in negative[0][1]
    assert DREAMO_COND_KEY not in negative[0][1].get("model_conds", {})
    torch.testing.assert_close(negative[0][0], neutral[0][0])


def test_branches_node_keeps_redux_tokens_after_the_prompt(tiny_clip):
    prompt = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize("a red car"))
    redux_tokens = torch.randn(1, 9, 32)
    positive = [[torch.cat([prompt[0][0], redux_tokens], dim=1), dict(prompt[0][1])]]  # what StyleModelApply does
    image_only, _ = GuidanceBranchesNode.execute(positive, tiny_clip, "", prompt).args
    neutral = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize(""))
    torch.testing.assert_close(image_only[0][0], torch.cat([neutral[0][0], redux_tokens], dim=1))
    other = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize("something else"))
    with pytest.raises(ValueError, match="not the text this conditioning was built from"):
        GuidanceBranchesNode.execute(positive, tiny_clip, "", other)


def test_dreamo_sampling_with_normalized_guidance(tiny_flux, tiny_clip, tiny_vae, models_dir):
    model, _ = load_dreamo(tiny_flux)
    prompt = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize("a toy from [ref#1]"))
    positive, _ = DreamOReferenceNode.execute(prompt, tiny_vae, torch.rand(1, 64, 64, 3), "ip", 64, 0, None).args
    image_only, negative = GuidanceBranchesNode.execute(positive, tiny_clip, "", None).args

    calls = []

    def counting(apply_model, args):
        calls.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted = model.clone()
    counted.set_model_unet_function_wrapper(counting)
    (guider,) = NormalizedGuidanceGuiderNode.execute(counted, positive, image_only, negative, 3.0, 2.0, 1.0, True).args
    noise = torch.randn(BATCH, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([1.0, 0.6, 0.3, 0.0])
    out = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas, seed=0)
    assert out.shape == (BATCH, 16, 4, 4) and torch.isfinite(out).all()
    # positive and image_only share shapes (same references) -> one call; the reference-free negative -> another.
    assert sorted(calls[:2]) == [BATCH, 2 * BATCH] and len(calls) == 2 * 3
