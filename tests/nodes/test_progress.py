"""Long node work reports through ComfyUI's progress bar (tier 2, in-process): the global hook the
server forwards to the browser receives every tick, ending at the total."""

import comfy.utils
import pytest
import torch

from refcustom.tests.nodes.dreamo_loading import load_dreamo

pytestmark = pytest.mark.tier2


@pytest.fixture
def ticks():
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    yield seen
    comfy.utils.set_progress_bar_global_hook(None)


def test_dreamo_loader_ticks_once_per_weight_file(tiny_flux, models_dir, ticks):
    load_dreamo(tiny_flux, cfg_distill_lora="dreamo_cfg_distill.safetensors", cfg_distill_strength=1.0,
                turbo_lora="flux-turbo.safetensors", turbo_strength=1.0)
    assert ticks == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_aligngen_nodes_tick_to_completion(tiny_flux, tiny_clip, tiny_vae, models_dir, ticks):
    from refcustom.nodes.aligngen_conditioning import AlignGenConditioningNode
    from refcustom.nodes.aligngen_loader import AlignGenLoader
    from refcustom.tests.nodes.aligngen_inputs import tiny_redux

    _, weights = AlignGenLoader.execute(tiny_flux, "aligngen_lora.safetensors", 1.0).args
    assert ticks == [(1, 2), (2, 2)]
    ticks.clear()
    style_model, vision = tiny_redux()
    AlignGenConditioningNode.execute(tiny_clip, weights, "a red guitar", "red guitar", style_model, vision, tiny_vae,
                                     torch.rand(1, 64, 64, 3), 64)
    assert ticks == [(1, 3), (2, 3), (3, 3)]


def test_dreamo_reference_ticks_once_per_image_and_encodes_like_one_batch(tiny_flux, tiny_clip, tiny_vae, ticks):
    from refcustom.model.reference_preprocess import prepare_reference
    from refcustom.nodes.dreamo_reference import DreamOReferenceNode, dreamo_references_of

    images = torch.rand(3, 64, 48, 3, generator=torch.Generator().manual_seed(0))
    prompt = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize("a toy"))
    positive, prepared = DreamOReferenceNode.execute(prompt, tiny_vae, images, "ip", 64, 0, None).args
    assert ticks == [(1, 3), (2, 3), (3, 3)]
    [(_, cond)] = positive
    slot = dreamo_references_of(cond).references[0].slot
    latent = cond["reference_latents"][slot]
    assert latent.shape[0] == 3
    # The same latents as ComfyUI's own batched encode (float32 batching noise only).
    torch.testing.assert_close(latent, tiny_vae.encode(prepare_reference(images, "ip", 64)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(prepared, prepare_reference(images, "ip", 64))


def test_shared_attention_reference_leaves_the_bars_to_the_sampler(tiny_flux, tiny_clip, tiny_vae, ticks):
    """It does no long work itself (its references are encoded when sampling starts, at the sampled size),
    and that encode does not tick inside the sampler node, whose bar counts steps only."""
    import nodes as comfy_nodes

    from refcustom.nodes.shared_attention import SharedAttentionReferenceNode

    references = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    (patched,) = SharedAttentionReferenceNode.execute(tiny_flux, tiny_vae, references, 1, 1, False, 3).args
    assert ticks == []
    positive = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize("a toy"))
    latent = {"samples": torch.zeros(1, 16, 4, 4)}
    comfy_nodes.common_ksampler(patched, 0, 3, 1.0, "euler", "simple", positive, positive, latent)
    assert ticks == [(1, 3), (2, 3), (3, 3)]
