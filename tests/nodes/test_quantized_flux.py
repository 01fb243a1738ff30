"""DreamO's and AlignGen's LoRAs on a quantized FLUX: UNETLoader's fp8_e4m3fn weights (tier 2, in-process).

The tiny FLUX is built as UNETLoader builds an fp8 model after detection (tests/fixtures/tiny_host_models.py
`build_tiny_flux(weight_dtype=...)`; detection itself needs FLUX's real 3072 width): weights stored in fp8,
every Linear cast per forward to the compute dtype (float32 on the CPU). One forward pass per setting, with
a reference, so each LoRA's effect is measured where it acts, not through a sampler's amplification.

- Partly loaded (ComfyUI's low-VRAM path, what GGUF models use too: weights dequantized per forward, LoRA
  deltas added on the fly in the compute dtype): each LoRA changes the output as it does on the float32
  model, up to fp8's own error on the base weights (cosine >= 0.98, norm within 10%).
- Fully loaded: ComfyUI rounds LoRA-patched weights back into fp8 (stochastic rounding, seeded per key), so a
  small LoRA is partly lost in rounding: that is core's behaviour for any LoRA. A LoRA loaded by Load DreamO
  gives exactly what core's LoRA loader gives with the same file on the same fp8 model.
- AlignGen's reference LoRA is not a weight patch: on fp8 it acts in the compute dtype, fully or partly
  loaded alike (bit-identical), and as on float32 (cosine >= 0.98).
"""

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
import pytest
import torch

from refcustom.model.dreamo_conditioning import DreamOReference, DreamOReferenceSet
from refcustom.nodes.aligngen_loader import AlignGenLoader
from refcustom.nodes.aligngen_patch import AlignGenConditioning
from refcustom.tests.fixtures import tiny_host_models
from refcustom.tests.nodes.dreamo_loading import load_dreamo
from refcustom.tests.nodes.patch_cases import ALL_DREAMO_LORAS

pytestmark = pytest.mark.tier2

FP8 = "fp8_e4m3fn"
DREAMO_LORAS = ["dreamo", *sorted(k[:-len("_lora")] for k in ALL_DREAMO_LORAS if k.endswith("_lora"))]


@pytest.fixture
def load_mode(memory_budget):
    """set("full" | "partial"): how the next FLUX loads (partial: nothing fits, everything cast per forward)."""
    return lambda mode: memory_budget(0.0 if mode == "partial" else None)


def inputs():
    g = torch.Generator().manual_seed(3)
    return {"x": torch.randn(1, 16, 8, 8, generator=g), "ref": torch.randn(1, 16, 8, 8, generator=g),
            "context": torch.randn(1, 7, 32, generator=g), "y": torch.randn(1, 32, generator=g)}


def forward(model, **payload):
    """One pass of the patched model with a reference latent in the diagonal layout. fp8 weights need
    inference mode for loading and running, as ComfyUI's executor provides."""
    data = inputs()
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([model])
        out = model.model.diffusion_model(
            data["x"], torch.tensor([0.7]), data["context"], y=data["y"], guidance=torch.tensor([3.5]),
            ref_latents=[data["ref"]], ref_latents_method="uxo", transformer_options={"wrappers": model.wrappers},
            **payload)
    return out.float().clone()


DREAMO_PASS = {"refcustom_dreamo": DreamOReferenceSet((DreamOReference(index=1, slot=0),))}
ALIGNGEN_PASS = {"refcustom_aligngen": AlignGenConditioning(concept_start=2, concept_end=5, reference_slot=0)}


def dreamo_without(slot):
    """Load DreamO's arguments with every LoRA on but `slot`."""
    args = dict(ALL_DREAMO_LORAS)
    if slot == "dreamo":
        args["dreamo_strength"] = 0.0
    else:
        args[f"{slot}_lora"] = "none"
    return args


def dreamo_effects(base) -> dict[str, torch.Tensor]:
    """Per DreamO LoRA: the output with every LoRA minus the output without that one."""
    everything = forward(load_dreamo(base, **ALL_DREAMO_LORAS)[0], **DREAMO_PASS)
    return {slot: everything - forward(load_dreamo(base, **dreamo_without(slot))[0], **DREAMO_PASS)
            for slot in DREAMO_LORAS}


def aligngen_effect(base) -> tuple[torch.Tensor, torch.Tensor]:
    """(output with the reference LoRA, its effect: the output minus the one at lora_strength 0)."""
    on = forward(AlignGenLoader.execute(base, "aligngen_lora.safetensors", 1.0).args[0], **ALIGNGEN_PASS)
    off = forward(AlignGenLoader.execute(base, "aligngen_lora.safetensors", 0.0).args[0], **ALIGNGEN_PASS)
    return on, on - off


def assert_acts_as_on_float32(quantized: torch.Tensor, exact: torch.Tensor, what: str):
    cosine = torch.nn.functional.cosine_similarity(quantized.flatten(), exact.flatten(), dim=0)
    ratio = quantized.norm() / exact.norm()
    assert exact.norm() > 1e-2, f"{what}: the LoRA does nothing even on float32"
    assert cosine >= 0.98 and 0.9 <= ratio <= 1.1, f"{what}: on fp8 cosine {cosine:.4f}, norm ratio {ratio:.3f}"


def test_fp8_tiny_flux_is_stored_in_fp8_and_cast_per_forward():
    model = tiny_host_models.build_tiny_flux(0, FP8)
    linear = model.model.diffusion_model.double_blocks[0].img_attn.qkv
    assert linear.weight.dtype == torch.float8_e4m3fn and linear.comfy_cast_weights
    assert model.model.manual_cast_dtype == torch.float32
    exact = tiny_host_models.build_tiny_flux(0).model.diffusion_model.double_blocks[0].img_attn.qkv.weight
    torch.testing.assert_close(linear.weight.float(), exact.to(torch.float8_e4m3fn).float(), rtol=0, atol=0)


def test_each_dreamo_lora_acts_on_fp8_as_on_float32_when_cast_per_forward(models_dir, load_mode):
    load_mode("full")
    exact = dreamo_effects(tiny_host_models.build_tiny_flux(0))
    load_mode("partial")
    quantized = dreamo_effects(tiny_host_models.build_tiny_flux(0, FP8))
    for slot in DREAMO_LORAS:
        assert_acts_as_on_float32(quantized[slot], exact[slot], f"DreamO's {slot} LoRA")


@pytest.mark.parametrize("slot,name,strength", [("turbo", "flux-turbo.safetensors", 1.0),
                                                ("sft", "v1.1/dreamo_sft_lora.safetensors", 1.0),
                                                ("dpo", "v1.1/dreamo_dpo_lora.safetensors", 1.25)])
def test_a_dreamo_lora_on_fully_loaded_fp8_is_what_core_lora_loading_gives(models_dir, load_mode, slot, name, strength):
    load_mode("full")
    base = tiny_host_models.build_tiny_flux(0, FP8)
    ours = forward(load_dreamo(base, **{f"{slot}_lora": name, f"{slot}_strength": strength})[0], **DREAMO_PASS)
    dreamo_only = load_dreamo(base)[0]
    folder = "loras" if slot == "turbo" else "dreamo"
    lora = comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise(folder, name))
    core = forward(comfy.sd.load_lora_for_models(dreamo_only, None, lora, strength, 0)[0], **DREAMO_PASS)
    assert torch.equal(ours, core)
    assert not torch.equal(ours, forward(dreamo_only, **DREAMO_PASS))  # and it does something


def test_aligngen_reference_lora_on_fp8(models_dir, load_mode):
    load_mode("full")
    _, exact = aligngen_effect(tiny_host_models.build_tiny_flux(0))
    full, quantized = aligngen_effect(tiny_host_models.build_tiny_flux(0, FP8))
    assert_acts_as_on_float32(quantized, exact, "AlignGen's reference LoRA")
    load_mode("partial")
    partial, _ = aligngen_effect(tiny_host_models.build_tiny_flux(0, FP8))
    assert torch.equal(partial, full), "fp8 partly loaded differs from fully loaded"
