"""DreamO on ComfyUI's own FLUX, against an independent computation (tier 2, in-process).

The reference computation is diffusers' FluxTransformer2DModel carrying the same (LoRA-patched)
weights, fed with the references concatenated by hand, the diagonal position ids written out by
hand and DreamO's embedding added after `x_embedder` by a forward hook: what the official
`dreamo/transformer.py` does. Our side is core FLUX with `ref_latents_method="uxo"` plus the DreamO
wrapper and post-input patch, so this also proves core's "uxo" layout is DreamO's.
"""

import comfy.model_management
import pytest
import torch

from refcustom.model.dreamo_conditioning import DreamOReference, DreamOReferenceSet
from refcustom.tests.fixtures.dreamo_files import expected_deltas, seed_of, tiny_embedding_tables
from refcustom.tests.nodes.diffusers_twin import patched_state_dict, to_diffusers
from refcustom.tests.nodes.dreamo_loading import load_dreamo

pytestmark = pytest.mark.tier2



def pack(latent):
    b, c, h, w = latent.shape
    return latent.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens, h, w):
    b = tokens.shape[0]
    return tokens.reshape(b, h // 2, w // 2, -1, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, h, w)


def hand_written_ids(grids):
    ids, row0, col0 = [], 0, 0
    for h, w in grids:
        ids += [[0.0, row0 + r, col0 + c] for r in range(h) for c in range(w)]
        row0, col0 = row0 + h, col0 + w
    return torch.tensor(ids)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(3)
    batch = 2
    return {
        "x": torch.randn(batch, 16, 8, 8, generator=g),  # 4x4 tokens
        "refs": [torch.randn(batch, 16, 4, 6, generator=g), torch.randn(batch, 16, 6, 4, generator=g)],  # 2x3, 3x2
        "context": torch.randn(batch, 7, 32, generator=g),
        "y": torch.randn(batch, 32, generator=g),
        "t": torch.tensor([0.7, 0.7]),
        "guidance": torch.tensor([3.5, 3.5]),
    }


def comfy_forward(model_patcher, inputs, references=None):
    comfy.model_management.load_models_gpu([model_patcher], force_full_load=True)
    kwargs = {}
    ref_latents = None
    if references is not None:
        kwargs = {"ref_latents_method": "uxo", "refcustom_dreamo": references}
        ref_latents = inputs["refs"]
    with torch.no_grad():
        return model_patcher.model.diffusion_model(
            inputs["x"], inputs["t"], inputs["context"], y=inputs["y"], guidance=inputs["guidance"],
            ref_latents=ref_latents, transformer_options={"wrappers": model_patcher.wrappers}, **kwargs,
        )


def diffusers_forward(model, inputs, indices=None):
    tables = tiny_embedding_tables(0)
    task, idx = tables["dreamo_task_embedding.weight"], tables["dreamo_idx_embedding.weight"]
    tokens = [pack(inputs["x"])]
    grids = [(4, 4)]
    rows = [task[1].expand(16, -1)]
    if indices is not None:
        for ref, k in zip(inputs["refs"], indices, strict=True):
            tokens.append(pack(ref))
            grids.append((ref.shape[2] // 2, ref.shape[3] // 2))
            rows.append((task[0] + idx[k]).expand(tokens[-1].shape[1], -1))
    embedding = torch.cat(rows)
    hook = None
    if indices is not None:
        hook = model.x_embedder.register_forward_hook(lambda module, args, out: out + embedding)
    try:
        with torch.no_grad():
            out = model(
                hidden_states=torch.cat(tokens, dim=1), encoder_hidden_states=inputs["context"],
                pooled_projections=inputs["y"], timestep=inputs["t"], img_ids=hand_written_ids(grids),
                txt_ids=torch.zeros(inputs["context"].shape[1], 3), guidance=inputs["guidance"],
            ).sample
    finally:
        if hook is not None:
            hook.remove()
    return unpack(out[:, :16], 8, 8)


def test_lora_deltas_land_on_the_fused_flux_weights(tiny_flux, models_dir):
    base = patched_state_dict(tiny_flux)
    patched, _ = load_dreamo(tiny_flux, dreamo_strength=0.7, cfg_distill_lora="dreamo_cfg_distill.safetensors",
                             cfg_distill_strength=1.0)
    after = patched_state_dict(patched)
    expected = {k: base[k].clone() for k in base}
    for name, strength in (("dreamo/dreamo.safetensors", 0.7), ("dreamo/dreamo_cfg_distill.safetensors", 1.0)):
        for key, delta in expected_deltas(seed_of(name), strength).items():
            expected[key] += delta
    for key in base:
        torch.testing.assert_close(after[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("layout_file", [
    "comfyui/dreamo_comfyui.safetensors",  # BFL fused keys, zero-padded linear1
])
def test_comfyui_layout_gives_the_same_weights_as_the_original(tiny_flux, models_dir, layout_file):
    original, _ = load_dreamo(tiny_flux)
    original_sd = patched_state_dict(original)
    comfy_layout, _ = load_dreamo(tiny_flux, dreamo_file=layout_file, embedding_file="embedding.safetensors")
    comfy_sd = patched_state_dict(comfy_layout)
    for key in original_sd:
        torch.testing.assert_close(comfy_sd[key], original_sd[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("slot,name,strength", [
    ("sft", "v1.1/dreamo_sft_lora.safetensors", 1.0),   # diffusers layout
    ("dpo", "v1.1/dreamo_dpo_lora.safetensors", 1.25),  # kohya layout with alpha
    ("turbo", "flux-turbo.safetensors", 1.0),           # from models/loras
])
def test_each_extra_lora_adds_its_own_delta(tiny_flux, models_dir, slot, name, strength):
    without, _ = load_dreamo(tiny_flux)
    with_extra, _ = load_dreamo(tiny_flux, **{f"{slot}_lora": name, f"{slot}_strength": strength})
    before, after = patched_state_dict(without), patched_state_dict(with_extra)
    file_name = f"loras/{name}" if slot == "turbo" else f"dreamo/{name}"
    deltas = expected_deltas(seed_of(file_name), strength)
    for key in before:
        torch.testing.assert_close(after[key] - before[key], deltas.get(key, torch.zeros_like(before[key])),
                                   rtol=1e-4, atol=1e-6, msg=key)


def test_forward_with_references_matches_diffusers_by_hand(tiny_flux, models_dir, inputs):
    patched, _ = load_dreamo(tiny_flux)
    references = DreamOReferenceSet((DreamOReference(index=1, slot=0), DreamOReference(index=3, slot=1)))
    ours = comfy_forward(patched, inputs, references)
    reference = diffusers_forward(to_diffusers(patched), inputs, indices=[1, 3])
    assert ours.shape == (2, 16, 8, 8)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_pass_without_dreamo_references_is_plain_flux(tiny_flux, models_dir, inputs):
    """The negative branch: no references, no embeddings (not even the noise row)."""
    patched, _ = load_dreamo(tiny_flux)
    ours = comfy_forward(patched, inputs, references=None)
    reference = diffusers_forward(to_diffusers(patched), inputs, indices=None)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_wrong_reference_method_is_a_clear_error(tiny_flux, models_dir, inputs):
    patched, _ = load_dreamo(tiny_flux)
    comfy.model_management.load_models_gpu([patched], force_full_load=True)
    references = DreamOReferenceSet((DreamOReference(index=1, slot=0),))
    with pytest.raises(ValueError, match="diagonal reference layout"):
        patched.model.diffusion_model(
            inputs["x"], inputs["t"], inputs["context"], y=inputs["y"], guidance=inputs["guidance"],
            ref_latents=inputs["refs"][:1], transformer_options={"wrappers": patched.wrappers},
            ref_latents_method="offset", refcustom_dreamo=references,
        )
