"""Partial loading, ComfyUI's low-VRAM path, gives the fully loaded result for every patch of ours (tier 2).

On a CPU host ComfyUI always loads models fully, so the memory budget that load_models_gpu hands to
`LoadedModel.model_load` is made small here (the `memory_budget` fixture, as on a GPU short of memory;
see shared/notes/testing-model-management.md): ComfyUI then leaves part of the model offloaded, casts those
weights per forward and patches their LoRA deltas on the fly (LowVramPatch) instead of in place. A
recording wrapper checks that this really happened during sampling. In float32 both ways are the same
arithmetic, so results must be bit-identical; the model carries a core LoRA as well as ours.

Then the user's sequence (plain, ours over a core LoRA, plain + core LoRA, ours, plain) on one partly
loaded model, each result compared with a fully loaded fresh model.
"""

import comfy.model_patcher
import comfy.patcher_extension
import pytest
import torch

from refcustom.tests.fixtures import tiny_host_models
from refcustom.tests.nodes.patch_cases import PATCH_CASES, plain, with_user_lora

pytestmark = pytest.mark.tier2

BUDGETS = {"half": 0.5, "quarter": 0.25, "almost_nothing": 0.0}  # of the FLUX model's size


def recording(model, seen: list):
    """A clone that records, per forward pass, how many modules run offloaded and how many weights get their
    LoRA patched on the fly."""
    def wrapper(executor, *args, **kwargs):
        modules = list(executor.class_obj.modules())
        offloaded = sum(1 for m in modules if m.__dict__.get("comfy_cast_weights") is True)
        on_the_fly = sum(isinstance(f, comfy.model_patcher.LowVramPatch)
                         for m in modules for f in getattr(m, "weight_function", []))
        seen.append((offloaded, on_the_fly))
        return executor(*args, **kwargs)

    recorded = model.clone()
    recorded.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_recording", wrapper)
    return recorded


@pytest.mark.parametrize("case", sorted(PATCH_CASES))
def test_partial_loading_gives_the_full_load_result(case, tiny_flux, tiny_clip, tiny_vae, models_dir, memory_budget):
    run = PATCH_CASES[case]
    model = with_user_lora(tiny_flux)
    seen = []
    memory_budget(None)
    full = run(recording(model, seen), tiny_clip, tiny_vae)
    assert seen and all(s == (0, 0) for s in seen), seen  # fully loaded: nothing offloaded
    offloaded = {}
    for name, fraction in BUDGETS.items():
        seen.clear()
        memory_budget(fraction)
        partial = run(recording(model, seen), tiny_clip, tiny_vae)
        assert torch.equal(partial, full), f"{case}: partial loading ({name}) changed the result"
        assert len(set(seen)) == 1 and seen[0][0] > 0 and seen[0][1] > 0, (name, seen)
        offloaded[name] = seen[0]
    assert offloaded["half"][0] < offloaded["quarter"][0] < offloaded["almost_nothing"][0], offloaded


@pytest.mark.parametrize("case", sorted(PATCH_CASES))
def test_the_user_sequence_on_a_partly_loaded_model(case, tiny_flux, tiny_clip, tiny_vae, models_dir,
                                                   memory_budget):
    """plain, ours over a core LoRA, plain + core LoRA, ours, plain: on one partly loaded model, each graph
    as on a fresh fully loaded one."""
    run = PATCH_CASES[case]
    steps = [("plain", plain), ("ours over a core LoRA", lambda m, c, v: run(with_user_lora(m), c, v)),
             ("plain + core LoRA", lambda m, c, v: plain(with_user_lora(m), c, v)), ("ours", run),
             ("plain again", plain)]
    memory_budget(None)
    expected = [step(tiny_host_models.build_tiny_flux(0), tiny_clip, tiny_vae) for _, step in steps]
    memory_budget(BUDGETS["quarter"])
    for (name, step), want in zip(steps, expected, strict=True):
        assert torch.equal(step(tiny_flux, tiny_clip, tiny_vae), want), f"{case}: '{name}' differs from a fresh model"
    assert not torch.equal(expected[0], expected[2])  # the core LoRA does something
    assert not torch.equal(expected[1], expected[3])  # under ours too
