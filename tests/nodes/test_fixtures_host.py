"""The tiny host models are real ComfyUI models: they sample, decode, take FLUX reference latents and
ComfyUI's own LoRA key mapping, and the fixture nodes serve them (tier 2, in-process)."""

from pathlib import Path

import comfy.latent_formats
import comfy.lora
import comfy.model_base
import comfy.model_management
import comfy.sd
import comfy.utils
import nodes as comfy_nodes
import pytest
import torch
from comfy_extras.nodes_edit_model import ReferenceLatent
from comfy_extras.nodes_flux import FluxKontextMultiReferenceLatentMethod

from refcustom.scripts.load_by_path import load_module
from refcustom.tests.fixtures import tiny_host_models
from refcustom.tests.nodes.core_nodes import run_core_node

pytestmark = pytest.mark.tier2


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def ksample(model, positive, negative, latent, seed=3, steps=2, cfg=1.0):
    (out,) = comfy_nodes.common_ksampler(model, seed, steps, cfg, "euler", "simple", positive, negative, {"samples": latent})
    return out["samples"]


def test_two_step_sampling_and_decode_give_a_finite_image(tiny_flux, tiny_clip, tiny_vae):
    positive, negative = encode(tiny_clip, "a red toy car"), encode(tiny_clip, "")
    latent = torch.zeros(1, 16, 6, 8)  # what EmptySD3LatentImage gives FLUX for 64x48
    samples = ksample(tiny_flux, positive, negative, latent, cfg=2.0)
    assert samples.shape == (1, 16, 6, 8) and torch.isfinite(samples).all()
    image = tiny_vae.decode(samples)
    assert image.shape == (1, 48, 64, 3)
    assert torch.isfinite(image).all() and 0.0 <= image.min() and image.max() <= 1.0
    assert image.std() > 0.05  # not a constant picture
    # The prompt matters at O(1), not at round-off level.
    other = ksample(tiny_flux, encode(tiny_clip, "a blue boat"), negative, latent, cfg=2.0)
    assert (other - samples).abs().max() > 0.1


def test_sampling_is_deterministic(tiny_flux, tiny_clip):
    positive, negative = encode(tiny_clip, "x"), encode(tiny_clip, "")
    first = ksample(tiny_flux, positive, negative, torch.zeros(2, 16, 4, 4))
    again = ksample(tiny_host_models.build_tiny_flux(0), positive, negative, torch.zeros(2, 16, 4, 4))
    assert torch.equal(first, again)


def test_models_depend_only_on_the_seed():
    a, b, c = (tiny_host_models.build_tiny_flux(s).model.diffusion_model.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["img_in.weight"], c["img_in.weight"])
    vae_a, vae_b = tiny_host_models.tiny_taesd_state_dict(0), tiny_host_models.tiny_taesd_state_dict(0)
    assert all(torch.equal(vae_a[k], vae_b[k]) for k in vae_a)


def test_flux_model_is_flux_dev_shaped(tiny_flux):
    model = tiny_flux.model
    assert isinstance(model, comfy.model_base.Flux)
    assert isinstance(model.latent_format, comfy.latent_formats.Flux)
    assert model.diffusion_model.params.guidance_embed
    cfg = model.model_config.unet_config
    assert (cfg["depth"], cfg["depth_single_blocks"], cfg["hidden_size"], cfg["num_heads"]) == (2, 2, 64, 2)
    assert all(torch.isfinite(p).all() for p in model.diffusion_model.parameters())


def test_comfy_lora_key_mapping_covers_the_tiny_model(tiny_flux):
    key_map = comfy.lora.model_lora_keys_unet(tiny_flux.model, {})
    # diffusers names reach the fused BFL weights through slices, as for the real FLUX.1-dev.
    assert key_map["transformer.transformer_blocks.1.attn.to_k"] == (
        "diffusion_model.double_blocks.1.img_attn.qkv.weight", (0, 64, 64))
    assert key_map["transformer.single_transformer_blocks.1.proj_mlp"] == (
        "diffusion_model.single_blocks.1.linear1.weight", (0, 192, 256))
    assert key_map["lora_unet_double_blocks_0_img_attn_proj"] == "diffusion_model.double_blocks.0.img_attn.proj.weight"

    g = torch.Generator().manual_seed(5)
    down, up = torch.randn(4, 64, generator=g), torch.randn(64, 4, generator=g)
    lora = {"transformer.transformer_blocks.0.attn.to_v.lora_A.weight": down,
            "transformer.transformer_blocks.0.attn.to_v.lora_B.weight": up}
    patched, _ = comfy.sd.load_lora_for_models(tiny_flux, None, lora, 0.5, 0.0)
    before = tiny_flux.model.diffusion_model.double_blocks[0].img_attn.qkv.weight.detach().clone()
    comfy.model_management.load_models_gpu([patched], force_full_load=True)
    after = patched.model.diffusion_model.double_blocks[0].img_attn.qkv.weight.detach().clone()
    patched.unpatch_model()
    expected = before.clone()
    expected[128:192] += 0.5 * (up @ down)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def test_reference_latents_with_the_uxo_method(tiny_flux, tiny_clip, tiny_vae):
    g = torch.Generator().manual_seed(2)
    reference = tiny_vae.encode(torch.rand(1, 32, 48, 3, generator=g))
    assert reference.shape == (1, 16, 4, 6)
    positive, negative = encode(tiny_clip, "the toy"), encode(tiny_clip, "")
    # Core nodes, as a graph would use them: ReferenceLatent, then the "uxo/uno" method.
    (with_ref,) = run_core_node(ReferenceLatent, conditioning=positive, latent={"samples": reference})
    (with_ref,) = run_core_node(FluxKontextMultiReferenceLatentMethod, conditioning=with_ref,
                                reference_latents_method="uxo/uno")
    assert with_ref[0][1]["reference_latents_method"] == "uxo"
    # And a second reference written directly into the cond dict.
    two_refs = [[with_ref[0][0], {**with_ref[0][1],
                                  "reference_latents": with_ref[0][1]["reference_latents"] + [torch.randn(1, 16, 6, 4, generator=g)]}]]

    latent = torch.zeros(1, 16, 8, 8)
    plain = ksample(tiny_flux, positive, negative, latent)
    one = ksample(tiny_flux, with_ref, negative, latent)
    two = ksample(tiny_flux, two_refs, negative, latent)
    for out in (one, two):
        assert out.shape == latent.shape and torch.isfinite(out).all()
    assert (one - plain).abs().max() > 1e-3 and (two - one).abs().max() > 1e-3

    # The forward itself: reference tokens go in, only the noise tokens come out.
    comfy.model_management.load_models_gpu([tiny_flux], force_full_load=True)
    x = torch.randn(1, 16, 8, 8, generator=g)
    with torch.no_grad():
        out = tiny_flux.model.diffusion_model(
            x, torch.tensor([0.5]), torch.randn(1, 7, 32, generator=g), y=torch.randn(1, 32, generator=g),
            guidance=torch.tensor([3.5]), ref_latents=[reference], ref_latents_method="uxo")
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_vae_behaves_like_the_flux_vae_for_shapes(tiny_vae):
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    latent = tiny_vae.encode(image)
    assert latent.shape == (1, 16, 8, 8) and torch.isfinite(latent).all()
    assert tiny_vae.latent_channels == 16 and tiny_vae.spacial_compression_encode() == 8
    # Raw FLUX-VAE latents: about (unit latents / 0.3611) + 0.1159, as taef1 gives.
    assert 1.0 < latent.std() < 6.0
    decoded = tiny_vae.decode(latent)
    assert decoded.shape == (1, 64, 64, 3) and torch.isfinite(decoded).all()
    assert 0.0 <= decoded.min() and decoded.max() <= 1.0 and decoded.std() > 0.05
    # Core EmptySD3LatentImage (what FLUX workflows use) makes latents of the shape the VAE decodes.
    from comfy_extras.nodes_sd3 import EmptySD3LatentImage

    empty = run_core_node(EmptySD3LatentImage, width=64, height=48, batch_size=1)[0]["samples"]
    assert tiny_vae.decode(empty).shape == (1, 48, 64, 3)


def test_clip_gives_flux_conditioning_and_takes_embedding_tokens(tiny_clip):
    cond = encode(tiny_clip, "a dog on grass")
    assert cond[0][0].shape == (1, 256, 32)
    assert cond[0][1]["pooled_output"].shape == (1, 32)
    tokens = tiny_clip.tokenize("a dog on grass")
    # ComfyUI's embedding mechanism: a tensor in the token list is an input embedding of its own.
    vector = torch.randn(32, generator=torch.Generator().manual_seed(4))
    t5 = list(tokens["t5xxl"][0])
    t5.insert(2, (vector, 1.0))
    tokens["t5xxl"] = [t5[:-1]]  # keep 256 tokens: drop one pad
    with_vector = tiny_clip.encode_from_tokens_scheduled(tokens)
    assert with_vector[0][0].shape == (1, 256, 32)
    assert not torch.allclose(with_vector[0][0], cond[0][0])
    # Same as writing that vector into a spare row of the T5 table and using its id.
    table = tiny_clip.cond_stage_model.t5xxl.transformer.get_input_embeddings().weight
    spare = 32099
    saved = table[spare].clone()
    with torch.no_grad():
        table[spare] = vector
    try:
        by_id = tiny_clip.tokenize("a dog on grass")
        ids = list(by_id["t5xxl"][0])
        ids.insert(2, (spare, 1.0))
        by_id["t5xxl"] = [ids[:-1]]
        expected = tiny_clip.encode_from_tokens_scheduled(by_id)
    finally:
        with torch.no_grad():
            table[spare] = saved
    torch.testing.assert_close(with_vector[0][0], expected[0][0], rtol=1e-5, atol=1e-5)


def _load_fixture_nodes():
    path = Path(tiny_host_models.__file__).with_name("fixture_nodes.py")
    return load_module("refcustom_test_fixture_nodes_under_test", path, register=False)


def test_fixture_nodes_serve_cached_tiny_models():
    module = _load_fixture_nodes()
    node_classes = module.get_fixture_nodes()
    schemas = {cls.GET_SCHEMA().node_id: cls.GET_SCHEMA() for cls in node_classes}
    assert set(schemas) == {"RefCustomTest_TinyFluxLoader", "RefCustomTest_TinyCLIPLoader", "RefCustomTest_TinyVAELoader",
                            "RefCustomTest_TinyNonFluxLoader", "RefCustomTest_TinyReduxLoader",
                            "RefCustomTest_TinyCLIPVisionLoader", "RefCustomTest_SamplingProbe"}
    assert all(s.category == "refcustom/testing" for s in schemas.values())
    flux_node, clip_node, vae_node, non_flux_node, redux_node, clip_vision_node, _ = node_classes
    model = flux_node.execute(seed=0).args[0]
    assert isinstance(model.model, comfy.model_base.Flux)
    assert flux_node.execute(seed=0).args[0] is model  # cached per seed
    assert flux_node.execute(seed=1).args[0] is not model
    assert isinstance(clip_node.execute(seed=0).args[0], comfy.sd.CLIP)
    assert isinstance(vae_node.execute(seed=0).args[0], comfy.sd.VAE)
    other = non_flux_node.execute(seed=0).args[0].model
    assert isinstance(other, comfy.model_base.SD3) and not isinstance(other, comfy.model_base.Flux)
    vision = clip_vision_node.execute(seed=0).args[0].encode_image(torch.rand(1, 40, 56, 3), crop=False)
    assert vision.last_hidden_state.shape == (1, 16, 48)
    assert redux_node.execute(seed=0).args[0].get_cond(vision).shape == (1, 16, 32)


def test_fixture_flux_takes_unet_loaders_weight_dtype_and_another_instance_is_another_object():
    module = _load_fixture_nodes()
    flux_node = module.get_fixture_nodes()[0]
    model = flux_node.execute(seed=0).args[0]
    fp8 = flux_node.execute(seed=0, weight_dtype="fp8_e4m3fn").args[0]
    assert fp8.model.diffusion_model.img_in.weight.dtype == torch.float8_e4m3fn
    other = flux_node.execute(seed=0, instance=7).args[0]
    assert other is not model and other.model is not model.model
    assert flux_node.execute(seed=0, instance=7).args[0] is other
    a, b = model.model.diffusion_model.state_dict(), other.model.diffusion_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fixture_model_cache_is_bounded():
    """A server that runs many seeds keeps at most CACHE_LIMIT tiny models, the most recently used ones."""
    import gc
    import weakref

    module = _load_fixture_nodes()
    flux_node = module.get_fixture_nodes()[0]
    first = weakref.ref(flux_node.execute(seed=0).args[0].model)
    kept = flux_node.execute(seed=1).args[0]
    for seed in range(2, 3 * module.CACHE_LIMIT):
        flux_node.execute(seed=seed)
        assert flux_node.execute(seed=1).args[0] is kept  # used again: stays
        assert len(module._CACHE) <= module.CACHE_LIMIT
    gc.collect()
    assert first() is None, "an evicted model is still referenced"
