"""AlignGen's DEM is a model ComfyUI manages, like a text encoder (tier 2, in-process).

Load AlignGen puts the DEM (~270M parameters at FLUX width) under a ModelPatcher on the text encoders'
devices and dtype (comfy.model_management.text_encoder_device / _offload_device / _dtype), built from
ComfyUI's manual-cast ops. AlignGen Conditioning loads it through load_models_gpu, so ComfyUI's free-memory
logic, --lowvram and /free act on it: it shows among the loaded models, unload_all_models (what /free does)
unloads it, and a budget smaller than the DEM leaves part of it offloaded and cast per forward, with the
same result.
"""

import comfy.cli_args
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import folder_paths
import pytest
import torch

from refcustom.model.aligngen import DeviationExtractionModule
from refcustom.model.aligngen_weights import read_aligngen_file
from refcustom.nodes.aligngen_conditioning import AlignGenConditioningNode
from refcustom.nodes.aligngen_loader import AlignGenLoader
from refcustom.tests.nodes.aligngen_inputs import tiny_redux

pytestmark = pytest.mark.tier2
PROMPT, CONCEPT = "a photo of a red guitar on a beach", "red guitar"


def conditioning(loaded, clip, vae):
    style_model, vision = tiny_redux(text_width=32)
    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(2))
    (out,) = AlignGenConditioningNode.execute(clip, loaded, PROMPT, CONCEPT, style_model, vision, vae, image, 64).args
    return out[0][0]


def dem_is_loaded(loaded) -> bool:
    return any(patcher is loaded.dem for patcher in comfy.model_management.loaded_models())


@pytest.fixture
def unloaded():
    comfy.model_management.unload_all_models()
    yield
    comfy.model_management.unload_all_models()


def test_the_dem_is_a_managed_model_like_a_text_encoder(tiny_flux, models_dir):
    _, loaded = AlignGenLoader.execute(tiny_flux, "aligngen_lora.safetensors", 1.0).args
    mm = comfy.model_management
    assert isinstance(loaded.dem, comfy.model_patcher.ModelPatcher) and loaded.dem.model is loaded.weights.dem
    assert loaded.dem.load_device == mm.text_encoder_device()
    assert loaded.dem.offload_device == mm.text_encoder_offload_device()
    assert {p.dtype for p in loaded.dem.model.parameters()} == {mm.text_encoder_dtype(loaded.dem.load_device)}
    for name, module in loaded.dem.model.named_modules():
        if list(module.parameters(recurse=False)):  # every weight-bearing module casts per forward when offloaded
            assert isinstance(module, (comfy.ops.manual_cast.Linear, comfy.ops.manual_cast.LayerNorm)), name
            assert not list(module.children()), name


def test_the_dem_loads_with_comfyui_and_unload_all_frees_it(tiny_flux, tiny_clip, tiny_vae, models_dir, unloaded):
    _, loaded = AlignGenLoader.execute(tiny_flux, "aligngen_lora.safetensors", 1.0).args
    assert not dem_is_loaded(loaded)
    first = conditioning(loaded, tiny_clip, tiny_vae)
    assert dem_is_loaded(loaded) and loaded.dem.loaded_size() == loaded.dem.model_size()
    comfy.model_management.unload_all_models()  # POST /free with unload_models
    assert not dem_is_loaded(loaded) and loaded.dem.loaded_size() == 0
    assert torch.equal(conditioning(loaded, tiny_clip, tiny_vae), first)


def test_a_dem_partly_loaded_gives_the_same_s_star(tiny_flux, tiny_clip, tiny_vae, models_dir, memory_budget):
    _, loaded = AlignGenLoader.execute(tiny_flux, "aligngen_lora.safetensors", 1.0).args
    full = conditioning(loaded, tiny_clip, tiny_vae)
    memory_budget(1 / 3, applies_to=lambda patcher: patcher is loaded.dem)  # the rest stays offloaded
    partial = conditioning(loaded, tiny_clip, tiny_vae)
    assert 0 < loaded.dem.loaded_size() < loaded.dem.model_size()
    offloaded = [m for m in loaded.dem.model.modules() if m.__dict__.get("comfy_cast_weights") is True]
    assert offloaded
    assert torch.equal(partial, full)


def test_dem_dtype_follows_comfyui_text_encoder_flags(tiny_flux, tiny_clip, tiny_vae, models_dir, unloaded, monkeypatch):
    """--fp32-text-enc keeps the DEM in float32: S* is then what the float32 DEM of the file computes."""
    monkeypatch.setattr(comfy.cli_args.args, "fp32_text_enc", True)
    _, loaded = AlignGenLoader.execute(tiny_flux, "aligngen_lora.safetensors", 1.0).args
    assert {p.dtype for p in loaded.dem.model.parameters()} == {torch.float32}
    embedding = conditioning(loaded, tiny_clip, tiny_vae)
    exact = read_aligngen_file(folder_paths.get_full_path_or_raise("aligngen", "aligngen_lora.safetensors")).dem
    assert type(exact.mlp[0]) is torch.nn.Linear and isinstance(exact, DeviationExtractionModule)
    # The node changed exactly one T5 row (S*'s); the float32 DEM of the file gives that row's value.
    plain = conditioning_without_dem(loaded, tiny_clip)
    changed = (embedding != plain).any(dim=-1)[0].nonzero().flatten().tolist()
    assert len(changed) == 1
    row = changed[0]
    concept_tokens = len([t for t, *_ in tiny_clip.tokenize(CONCEPT)["t5xxl"][0] if t not in (0, 1)])
    redux = tiny_redux(text_width=32)
    with torch.no_grad():
        expected = exact(plain[:, row:row + 1 + concept_tokens].float(), redux[0].get_cond(redux[1]).float())[0, 0]
    torch.testing.assert_close(embedding[0, row], expected.to(embedding), rtol=1e-5, atol=1e-5)


def conditioning_without_dem(loaded, clip):
    """The prompt as AlignGen Conditioning encodes it, S* spliced in, before the DEM replaces S*'s row."""
    from refcustom.model.aligngen import insert_learned_token
    from refcustom.nodes.aligngen_conditioning import tokenize_with_learned_token

    weights = loaded.weights
    before, rest = insert_learned_token(PROMPT, CONCEPT, weights.token_text)
    tokens, _, _ = tokenize_with_learned_token(clip, before, rest, weights.token_text, weights.learned_token, CONCEPT)
    return clip.encode_from_tokens_scheduled(tokens)[0][0]
