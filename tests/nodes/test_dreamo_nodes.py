"""DreamO nodes inside the real ComfyUI host: conditioning, errors, placeholders, true negative,
batch > 1 and isolation between patched and plain models (tier 2, in-process)."""

import comfy.model_management
import comfy.model_patcher
import comfy.samplers
import comfy.supported_models
import nodes as comfy_nodes
import pytest
import torch

from refcustom.nodes.conditioning_edit import without_references
from refcustom.nodes.dreamo_patch import DREAMO_COND_KEY
from refcustom.nodes.dreamo_reference import DreamOReferenceNode
from refcustom.nodes.true_cfg_guider import TrueCFGGuiderNode
from refcustom.tests.fixtures.dreamo_files import tiny_embedding_tables
from refcustom.tests.nodes.core_nodes import run_core_node
from refcustom.tests.nodes.dreamo_loading import load_dreamo

pytestmark = pytest.mark.tier2



def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def add_reference(conditioning, vae, image, task="ip", ref_res=64, index=0, mask=None):
    return DreamOReferenceNode.execute(conditioning, vae, image, task, ref_res, index, mask).args


def sample(model, positive, negative, batch=1, seed=7, steps=3, cfg=1.0, size=32):
    latent = {"samples": torch.zeros(batch, 16, size // 8, size // 8)}
    (out,) = comfy_nodes.common_ksampler(model, seed, steps, cfg, "euler", "simple", positive, negative, latent)
    return out["samples"]


@pytest.fixture
def image():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 48, 64, 3, generator=g)


# ---- references on the conditioning ----

def test_chained_references_get_indices_slots_and_the_diagonal_method(tiny_clip, tiny_vae, image):
    cond = encode(tiny_clip, "a toy from [ref#1]")
    for _ in range(3):
        cond, preview = add_reference(cond, tiny_vae, image)
    entry = cond[0][1]
    assert entry["reference_latents_method"] == "uxo"
    assert len(entry["reference_latents"]) == 3
    references = entry["model_conds"][DREAMO_COND_KEY].cond.references
    assert [(r.index, r.slot) for r in references] == [(1, 0), (2, 1), (3, 2)]
    # 48x64 at ref_res 64: k = sqrt(64*64/(48*64)) -> 55x73 floored to 48x64 -> latent 6x8
    assert tuple(entry["reference_latents"][0].shape) == (1, 16, 6, 8)
    assert tuple(preview.shape) == (1, 48, 64, 3)


def test_the_input_conditioning_is_not_mutated(tiny_clip, tiny_vae, image):
    cond = encode(tiny_clip, "a toy")
    add_reference(cond, tiny_vae, image)
    assert "reference_latents" not in cond[0][1] and "model_conds" not in cond[0][1]


def test_tenth_reference_is_a_clear_error(tiny_clip, tiny_vae, image):
    cond = encode(tiny_clip, "many")
    for _ in range(9):
        cond, _ = add_reference(cond, tiny_vae, image)
    with pytest.raises(ValueError, match="too many references: DreamO tells at most 9 apart"):
        add_reference(cond, tiny_vae, image)


def test_mask_of_the_wrong_size_and_odd_sized_references_are_errors(tiny_clip, tiny_vae, image):
    cond = encode(tiny_clip, "a toy")
    with pytest.raises(ValueError, match="MASK is 32x32 but its reference image is 64x48"):
        add_reference(cond, tiny_vae, image, mask=torch.ones(1, 32, 32))
    with pytest.raises(ValueError, match="MASK is empty"):
        add_reference(cond, tiny_vae, image, mask=torch.zeros(1, 48, 64))
    with pytest.raises(ValueError, match="at least 16 px"):
        add_reference(cond, tiny_vae, torch.rand(1, 9, 13, 3))


def test_kontext_method_on_the_same_conditioning_is_refused(tiny_clip, tiny_vae, image):
    cond = encode(tiny_clip, "a toy")
    cond = [[cond[0][0], {**cond[0][1], "reference_latents": [torch.zeros(1, 16, 4, 4)],
                          "reference_latents_method": "offset"}]]
    with pytest.raises(ValueError, match="'offset' layout"):
        add_reference(cond, tiny_vae, image)


def kontext_reference(conditioning, vae, image):
    """Core ReferenceLatent, as a Flux Kontext graph adds its input image (no layout method: Kontext's 'offset')."""
    from comfy_extras.nodes_edit_model import ReferenceLatent

    (out,) = run_core_node(ReferenceLatent, conditioning=conditioning, latent={"samples": vae.encode(image)})
    return out


def test_a_kontext_reference_before_dreamo_is_refused_at_the_node(tiny_clip, tiny_vae, image):
    cond = kontext_reference(encode(tiny_clip, "a toy from [ref#1]"), tiny_vae, image)
    assert "reference_latents_method" not in cond[0][1]  # core's own default: the Kontext layout
    with pytest.raises(ValueError, match="from a core ReferenceLatent node .*Give that image to DreamO instead"):
        add_reference(cond, tiny_vae, image)


def test_a_kontext_reference_after_dreamo_fails_sampling_with_the_fix(tiny_flux, models_dir, tiny_clip, tiny_vae,
                                                                        image):
    patched, _ = load_dreamo(tiny_flux)
    with_dreamo, _ = add_reference(encode(tiny_clip, "a toy from [ref#1]"), tiny_vae, image)
    mixed = kontext_reference(with_dreamo, tiny_vae, image)
    assert mixed[0][1]["reference_latents_method"] == "uxo"  # core kept DreamO's method: the silent change
    with pytest.raises(ValueError, match=r"reference latent\(s\) that no DreamO Reference node added \(slots \[1\]"):
        sample(patched, mixed, encode(tiny_clip, ""))
    # The fix the message names: the same image as a second DreamO reference samples.
    fixed, _ = add_reference(with_dreamo, tiny_vae, image)
    assert torch.isfinite(sample(patched, fixed, encode(tiny_clip, ""))).all()


# ---- loader errors ----

def tiny_sd3():
    config = {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 2, "pos_embed_max_size": 16,
              "adm_in_channels": 32, "num_patches": 256, "pos_embed_scaling_factor": None,
              "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}},
              "x_block_self_attn_layers": [], "qk_norm": None}
    model_config = comfy.supported_models.SD3(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def test_non_flux_model_is_refused(models_dir):
    with pytest.raises(TypeError, match="DreamO needs a FLUX.1 model.*SD3"):
        load_dreamo(tiny_sd3())


def test_wrong_weight_files_are_refused(tiny_flux, models_dir, tmp_path):
    with pytest.raises(ValueError, match="flux-turbo.safetensors holds no DreamO embedding tables"):
        load_dreamo(tiny_flux, dreamo_file="flux-turbo.safetensors")
    with pytest.raises(ValueError, match="comfyui/dreamo_comfyui.safetensors holds no DreamO embedding tables"):
        load_dreamo(tiny_flux, dreamo_file="comfyui/dreamo_comfyui.safetensors")
    with pytest.raises(ValueError, match="holds no LoRA weights"):
        load_dreamo(tiny_flux, turbo_lora="embedding.safetensors", turbo_strength=1.0)
    with pytest.raises(FileNotFoundError, match="neither models/dreamo nor models/loras"):
        load_dreamo(tiny_flux, dreamo_file="missing.safetensors")


def test_weights_for_another_model_size_are_refused(tiny_flux, models_dir):
    from safetensors.torch import save_file

    wide = {k: torch.zeros(v.shape[0], 96) for k, v in tiny_embedding_tables(0).items()}
    save_file(wide, str(models_dir / "dreamo" / "wide_embedding.safetensors"))
    with pytest.raises(ValueError, match="96 wide but this FLUX model's hidden size is 64"):
        load_dreamo(tiny_flux, embedding_file="wide_embedding.safetensors")


def test_loading_dreamo_twice_on_one_model_is_refused(tiny_flux, models_dir):
    patched, _ = load_dreamo(tiny_flux)
    with pytest.raises(ValueError, match="already has DreamO loaded"):
        load_dreamo(patched)


# ---- placeholders: tests/nodes/test_dreamo_text_encode.py ----


# ---- true negative ----

def test_without_references_strips_every_reference(tiny_clip, tiny_vae, image):
    cond, _ = add_reference(encode(tiny_clip, "a toy"), tiny_vae, image)
    stripped = without_references(cond)[0][1]
    assert "reference_latents" not in stripped and "reference_latents_method" not in stripped
    assert DREAMO_COND_KEY not in stripped.get("model_conds", {})
    assert "reference_latents" in cond[0][1]  # input untouched


def test_true_cfg_guider_negative_runs_without_references(tiny_flux, tiny_clip, tiny_vae, image, models_dir):
    model, _ = load_dreamo(tiny_flux)
    positive, _ = add_reference(encode(tiny_clip, "a toy from [ref#1]"), tiny_vae, image)
    clean_negative = encode(tiny_clip, "blurry")
    # A negative that (wrongly) carries the positive's references, as ConditioningZeroOut of it would.
    dirty_negative = [[clean_negative[0][0], {**positive[0][1], "pooled_output": clean_negative[0][1]["pooled_output"]}]]

    def run(positive_cond, negative, cfg):
        (guider,) = TrueCFGGuiderNode.execute(model, positive_cond, negative, cfg, 0, 10000, 0.0).args
        noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
        # One Euler step from sigma 1 to 0 returns the guided x0 prediction itself.
        sigmas = torch.tensor([1.0, 0.0])
        return guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas, seed=0)

    guided = run(positive, clean_negative, 3.0)
    torch.testing.assert_close(run(positive, dirty_negative, 3.0), guided, rtol=0, atol=0)

    # Independent CFG: each branch alone (cfg 1 runs the positive input only), then neg + s (pos - neg).
    # The negative alone is clean_negative run as a positive; process_latent_out is affine, so it commutes.
    positive_alone = run(positive, clean_negative, 1.0)
    negative_alone = run(clean_negative, clean_negative, 1.0)
    torch.testing.assert_close(guided, negative_alone + 3.0 * (positive_alone - negative_alone), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(guided, positive_alone)


def test_guider_rejects_an_inverted_range(tiny_flux, tiny_clip):
    cond = encode(tiny_clip, "x")
    with pytest.raises(ValueError, match="start_step"):
        TrueCFGGuiderNode.execute(tiny_flux, cond, cond, 2.0, 8, 2, 0.0)


# ---- batch > 1 and isolation ----

def test_batch_of_two_matches_two_single_runs(tiny_flux, tiny_clip, tiny_vae, image, models_dir):
    model, _ = load_dreamo(tiny_flux)
    positive, _ = add_reference(encode(tiny_clip, "a toy from [ref#1]"), tiny_vae, image)
    negative = encode(tiny_clip, "")
    batch = sample(model, positive, negative, batch=2)
    single = sample(model, positive, negative, batch=1)
    assert batch.shape == (2, 16, 4, 4) and torch.isfinite(batch).all()
    # prepare_noise draws the batch from one stream: item 0 of the batch has the single run's noise.
    torch.testing.assert_close(batch[:1], single, rtol=1e-4, atol=1e-5)


def test_plain_flux_is_bit_identical_before_and_after_dreamo_runs(tiny_flux, tiny_clip, tiny_vae, image, models_dir):
    positive = encode(tiny_clip, "a toy")
    negative = encode(tiny_clip, "")
    before = sample(tiny_flux, positive, negative, batch=2)

    strong, _ = load_dreamo(tiny_flux, dreamo_strength=1.0)
    weak, _ = load_dreamo(tiny_flux, dreamo_strength=0.3, turbo_lora="flux-turbo.safetensors", turbo_strength=1.0)
    with_refs, _ = add_reference(positive, tiny_vae, image)
    strong_first = sample(strong, with_refs, negative)
    weak_run = sample(weak, with_refs, negative)
    strong_again = sample(strong, with_refs, negative)
    after = sample(tiny_flux, positive, negative, batch=2)

    assert torch.equal(before, after)
    assert torch.equal(strong_first, strong_again)
    assert not torch.equal(strong_first, weak_run)
    assert not torch.equal(strong_first, sample(tiny_flux, with_refs, negative))
