"""AlignGen through ComfyUI's samplers (tier 2, in-process): CFG, batch > 1, isolation.

- CFG with a plain negative: the guided x0 equals neg + s (pos - neg) from the branches run alone,
  and the negative branch is plain FLUX (no LoRA, no mask: it has no AlignGen payload).
- A batch of 2 latents with one conditioning: item 0 equals the batch-1 run.
- Plain FLUX is bit-identical before and after AlignGen runs (its hooks live for one pass).
"""

from pathlib import Path

import comfy.samplers
import nodes as comfy_nodes
import pytest
import torch

from refcustom.model.aligngen import DeviationExtractionModule
from refcustom.model.aligngen_weights import AlignGenWeights, ReferenceLoRA
from refcustom.nodes.aligngen_conditioning import AlignGenConditioningNode
from refcustom.nodes.aligngen_loader import apply_aligngen, managed
from refcustom.tests.nodes.aligngen_inputs import tiny_redux

pytestmark = pytest.mark.tier2
HIDDEN, MLP = 64, 256


@pytest.fixture
def redux():
    return tiny_redux()


@pytest.fixture
def aligngen():
    g = torch.Generator().manual_seed(5)
    dem = DeviationExtractionModule(32, 32, heads=2)
    with torch.no_grad():
        for p in dem.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    loras = []
    for i in range(2):
        loras += [ReferenceLoRA(f"double_blocks.{i}.img_attn.qkv", torch.randn(4, HIDDEN, generator=g) * 0.1,
                                torch.randn(3 * HIDDEN, 4, generator=g) * 0.1),
                  ReferenceLoRA(f"double_blocks.{i}.img_attn.proj", torch.randn(4, HIDDEN, generator=g) * 0.1,
                                torch.randn(HIDDEN, 4, generator=g) * 0.1),
                  ReferenceLoRA(f"single_blocks.{i}.linear1", torch.randn(4, HIDDEN, generator=g) * 0.1,
                                torch.randn(3 * HIDDEN, 4, generator=g) * 0.1),
                  ReferenceLoRA(f"single_blocks.{i}.linear2", torch.randn(4, HIDDEN + MLP, generator=g) * 0.1,
                                torch.randn(HIDDEN, 4, generator=g) * 0.1)]
    return AlignGenWeights(torch.randn(32, generator=g), dem.eval(), tuple(loras), 1.0, "S*", Path("test"))


def positive_for(tiny_clip, tiny_vae, aligngen, redux):
    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(2))
    return AlignGenConditioningNode.execute(tiny_clip, managed(aligngen), "a photo of a red guitar", "red guitar", redux[0],
                                            redux[1], tiny_vae, image, 64).args[0]


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def one_step(model, positive, negative, cfg, batch=1):
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    noise = torch.randn(batch, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    # One Euler step from sigma 1 to 0 returns the guided x0 prediction itself.
    return guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"),
                         torch.tensor([1.0, 0.0]), seed=0)


def test_cfg_negative_branch_is_plain_flux(tiny_flux, tiny_clip, tiny_vae, aligngen, redux):
    model = apply_aligngen(tiny_flux, aligngen, 1.0)
    positive = positive_for(tiny_clip, tiny_vae, aligngen, redux)
    negative = encode(tiny_clip, "blurry")
    guided = one_step(model, positive, negative, 3.0)
    positive_alone = one_step(model, positive, negative, 1.0)
    negative_alone = one_step(model, negative, negative, 1.0)
    torch.testing.assert_close(guided, negative_alone + 3.0 * (positive_alone - negative_alone), rtol=1e-4, atol=1e-5)
    # The negative branch on the AlignGen model is exactly plain FLUX.
    assert torch.equal(negative_alone, one_step(tiny_flux, negative, negative, 1.0))
    # The positive branch is not: the LoRA and the mask act.
    with_ref_plain = one_step(tiny_flux, positive, negative, 1.0)
    assert (positive_alone - with_ref_plain).abs().max() > 1e-5


def test_batch_of_two_and_isolation(tiny_flux, tiny_clip, tiny_vae, aligngen, redux):
    plain_positive = encode(tiny_clip, "a photo of a red guitar")
    negative = encode(tiny_clip, "")
    latent = {"samples": torch.zeros(2, 16, 4, 4)}
    before = comfy_nodes.common_ksampler(tiny_flux, 7, 3, 1.0, "euler", "simple", plain_positive, negative, latent)[0]

    model = apply_aligngen(tiny_flux, aligngen, 1.0)
    positive = positive_for(tiny_clip, tiny_vae, aligngen, redux)
    batch = comfy_nodes.common_ksampler(model, 7, 3, 1.0, "euler", "simple", positive, negative, latent)[0]["samples"]
    single = comfy_nodes.common_ksampler(model, 7, 3, 1.0, "euler", "simple", positive, negative,
                                         {"samples": torch.zeros(1, 16, 4, 4)})[0]["samples"]
    assert batch.shape == (2, 16, 4, 4) and torch.isfinite(batch).all()
    torch.testing.assert_close(batch[:1], single, rtol=1e-4, atol=1e-5)

    after = comfy_nodes.common_ksampler(tiny_flux, 7, 3, 1.0, "euler", "simple", plain_positive, negative, latent)[0]
    assert torch.equal(before["samples"], after["samples"])


def test_guidance_branches_keep_the_reference_but_not_the_concept_rows(tiny_flux, tiny_clip, tiny_vae, aligngen,
                                                                      redux):
    """Normalized guidance: image_only = the reference without any text, so no text row may see it."""
    from refcustom.nodes.aligngen_patch import ALIGNGEN_COND_KEY
    from refcustom.nodes.normalized_guidance import GuidanceBranchesNode

    positive = positive_for(tiny_clip, tiny_vae, aligngen, redux)
    image_only, negative = GuidanceBranchesNode.execute(positive, tiny_clip, "").args
    payload = positive[0][1]["model_conds"][ALIGNGEN_COND_KEY].cond
    branch = image_only[0][1]["model_conds"][ALIGNGEN_COND_KEY].cond
    assert branch.concept_start == branch.concept_end == payload.concept_start
    assert branch.reference_slot == payload.reference_slot
    assert len(image_only[0][1]["reference_latents"]) == 1
    assert ALIGNGEN_COND_KEY not in negative[0][1].get("model_conds", {})
    assert "reference_latents" not in negative[0][1]
    # And the image-only branch runs through the AlignGen model.
    model = apply_aligngen(tiny_flux, aligngen, 1.0)
    assert torch.isfinite(one_step(model, image_only, negative, 1.0)).all()


def test_weights_for_another_model_size_are_refused(tiny_flux, aligngen):
    wide = [ReferenceLoRA(lora.target, torch.zeros(4, lora.down.shape[1] * 2), lora.up) for lora in aligngen.loras]
    other = AlignGenWeights(aligngen.learned_token, aligngen.dem, tuple(wide), 1.0, "S*", Path("wide.safetensors"))
    with pytest.raises(ValueError, match="different FLUX"):
        apply_aligngen(tiny_flux, other, 1.0)
    deeper = aligngen.loras + (ReferenceLoRA("double_blocks.7.img_attn.qkv", aligngen.loras[0].down,
                                             aligngen.loras[0].up),)
    other = AlignGenWeights(aligngen.learned_token, aligngen.dem, deeper, 1.0, "S*", Path("deep.safetensors"))
    with pytest.raises(ValueError, match="deeper model"):
        apply_aligngen(tiny_flux, other, 1.0)


def test_branches_with_different_concept_rows_share_one_model_call(tiny_flux, tiny_clip, tiny_vae, aligngen, redux):
    """Normalized guidance's positive and image-only branches batch into one call and equal separate calls."""
    import comfy.patcher_extension

    from refcustom.nodes.normalized_guidance import GuidanceBranchesNode

    model = apply_aligngen(tiny_flux, aligngen, 1.0)
    calls = []

    def count(executor, x, *args, **kwargs):
        calls.append(x.shape[0])
        return executor(x, *args, **kwargs)

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_count", count)
    positive = positive_for(tiny_clip, tiny_vae, aligngen, redux)
    image_only, _ = GuidanceBranchesNode.execute(positive, tiny_clip, "").args
    guided = one_step(model, positive, image_only, 2.0)  # CFG with image_only as "negative": both in one batch
    assert calls == [2]
    alone_positive = one_step(model, positive, image_only, 1.0)
    alone_image = one_step(model, image_only, image_only, 1.0)
    torch.testing.assert_close(guided, alone_image + 2.0 * (alone_positive - alone_image), rtol=1e-4, atol=1e-5)
    assert (alone_positive - alone_image).abs().max() > 1e-5
