"""Every node refuses bad inputs before work starts, naming the problem and the fix (tier 2, in-process).

- FLOAT inputs: NaN (what ComfyUI's API makes of "NaN") and ±inf on each node with FLOAT widgets.
- Reference batches: 1 (shared) or the latent batch, checked when sampling starts (DreamO, AlignGen).
- LoRA files whose matrices do not fit the model: refused before any patch is added, naming file, key, shapes.
- Weight files holding NaN/inf, and pickles renamed .safetensors.
"""

import math
import pickle

import nodes as comfy_nodes
import pytest
import torch
from comfy_api.latest import io
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from refcustom.nodes import node_list
from refcustom.nodes.aligngen_conditioning import AlignGenConditioningNode
from refcustom.nodes.aligngen_loader import AlignGenLoader
from refcustom.nodes.dreamo_reference import DreamOReferenceNode
from refcustom.nodes.normalized_guidance import NormalizedGuidanceGuiderNode
from refcustom.nodes.shared_attention import MaskedSharedAttentionNode, SharedAttentionReferenceNode
from refcustom.nodes.true_cfg_guider import TrueCFGGuiderNode
from refcustom.tests.fixtures.aligngen_files import ALIGNGEN_FILE
from refcustom.tests.fixtures.dreamo_files import DPO_FILE, SFT_FILE, TURBO_FILE
from refcustom.tests.nodes.aligngen_inputs import tiny_redux
from refcustom.tests.nodes.dreamo_loading import load_dreamo

pytestmark = pytest.mark.tier2

NAN = float("nan")


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def sample(model, positive, negative, batch, cfg=1.0, size=32):
    latent = {"samples": torch.zeros(batch, 16, size // 8, size // 8)}
    (out,) = comfy_nodes.common_ksampler(model, 3, 2, cfg, "euler", "simple", positive, negative, latent)
    return out["samples"]


def images(count, seed=1):
    return torch.rand(count, 48, 64, 3, generator=torch.Generator().manual_seed(seed))


def assert_names(error, *parts):
    message = str(error.value)
    for part in parts:
        assert part in message, f"{part!r} not in: {message}"


# ---- FLOAT inputs: NaN and infinity ----

def float_cases(flux, clip, vae, value):
    """(display name, input name, call) for every FLOAT input of every node."""
    cond = encode(clip, "a photo")
    mask = torch.ones(2, 32, 32)

    def dreamo(**kwargs):
        return lambda: load_dreamo(flux, **kwargs)

    cases = [("Load DreamO (FLUX)", "dreamo_strength", dreamo(dreamo_strength=value))]
    for slot, name in (("cfg_distill", "dreamo_cfg_distill.safetensors"), ("turbo", "flux-turbo.safetensors"),
                       ("sft", "v1.1/dreamo_sft_lora.safetensors"), ("dpo", "v1.1/dreamo_dpo_lora.safetensors"),
                       ("quality_pos", "dreamo_quality_lora_pos.safetensors"),
                       ("quality_neg", "dreamo_quality_lora_neg.safetensors")):
        cases.append(("Load DreamO (FLUX)", f"{slot}_strength",
                      dreamo(**{f"{slot}_lora": name, f"{slot}_strength": value})))
    cases += [
        ("Load AlignGen (FLUX)", "lora_strength",
         lambda: AlignGenLoader.execute(flux, "aligngen_lora.safetensors", value)),
        ("DreamO True CFG Guider", "cfg", lambda: TrueCFGGuiderNode.execute(flux, cond, cond, value, 0, 100, 0.0)),
        ("DreamO True CFG Guider", "first_step_guidance",
         lambda: TrueCFGGuiderNode.execute(flux, cond, cond, 2.0, 0, 100, value)),
    ]
    for name, args in (("text_scale", (value, 8.0, 5.0)), ("image_scale", (7.5, value, 5.0)),
                       ("image_scale_increase", (7.5, 8.0, value))):
        cases.append(("Normalized Image+Text Guider (SynCD)", name,
                      lambda args=args: NormalizedGuidanceGuiderNode.execute(flux, cond, cond, cond, *args, True)))
    cases += [
        ("Masked Shared Attention (SynCD)", "full_shared_above_sigma",
         lambda: MaskedSharedAttentionNode.execute(flux, 3, 1, False, mask=mask, full_shared_above_sigma=value)),
        ("Shared Attention Reference (SynCD)", "full_shared_above_sigma",
         lambda: SharedAttentionReferenceNode.execute(flux, vae, images(1), 3, 1, False, 0,
                                                      full_shared_above_sigma=value)),
    ]
    return cases


@pytest.mark.parametrize("value", [NAN, math.inf, -math.inf])
def test_every_float_input_refuses_nan_and_infinity(tiny_flux, tiny_clip, tiny_vae, models_dir, value):
    cases = float_cases(tiny_flux, tiny_clip, tiny_vae, value)
    schemas = [node.define_schema() for node in node_list()]
    floats = {(s.display_name, i.id) for s in schemas for i in s.inputs if isinstance(i, io.Float.Input)}
    assert {(node, name) for node, name, _ in cases} == floats  # every FLOAT input of the pack's 10 nodes
    for node, name, call in cases:
        with pytest.raises(ValueError) as error:
            call()
        assert_names(error, f"{node}: {name} is {value}", "not a finite number", f"Set {name} to a number between")


def test_finite_floats_still_pass(tiny_flux, tiny_clip):
    cond = encode(tiny_clip, "a photo")
    assert TrueCFGGuiderNode.execute(tiny_flux, cond, cond, 2.5, 0, 100, 0.0).args[0] is not None
    patched = MaskedSharedAttentionNode.execute(tiny_flux, 3, 1, False, mask=torch.ones(2, 32, 32),
                                                full_shared_above_sigma=0.5).args[0]
    assert patched is not tiny_flux


# ---- reference batch pairing ----

def dreamo_positive(clip, vae, count):
    return DreamOReferenceNode.execute(encode(clip, "a toy from [ref#1]"), vae, images(count), "ip", 64, 0,
                                       None).args[0]


@pytest.mark.parametrize("references, latents", [(9, 1), (2, 3)])
def test_dreamo_reference_batch_must_be_one_or_the_latent_batch(tiny_flux, tiny_clip, tiny_vae, models_dir,
                                                               references, latents):
    model, _ = load_dreamo(tiny_flux)
    positive = dreamo_positive(tiny_clip, tiny_vae, references)
    with pytest.raises(ValueError) as error:
        sample(model, positive, encode(tiny_clip, ""), latents)
    assert_names(error, "DreamO Reference (index 1)", f"batch of {references} reference images",
                 f"latent batch of {latents}", "one DreamO Reference node per reference image",
                 "as many reference images as the latent batch")


def test_dreamo_reference_batch_of_one_or_equal_runs_also_with_conds_batched(tiny_flux, tiny_clip, tiny_vae,
                                                                            models_dir):
    model, _ = load_dreamo(tiny_flux)
    shared = dreamo_positive(tiny_clip, tiny_vae, 1)
    assert torch.isfinite(sample(model, shared, encode(tiny_clip, ""), 3)).all()
    paired = dreamo_positive(tiny_clip, tiny_vae, 2)
    # cfg 2 with the same references on both sides: core runs both conds in one call (x batch 4, latent batch 2).
    assert torch.isfinite(sample(model, paired, paired, 2, cfg=2.0)).all()


def test_aligngen_reference_batch_must_be_one_or_the_latent_batch(tiny_flux, tiny_clip, tiny_vae, models_dir):
    model, aligngen = AlignGenLoader.execute(tiny_flux, "aligngen_lora.safetensors", 1.0).args
    style_model, vision = tiny_redux()
    positive = AlignGenConditioningNode.execute(tiny_clip, aligngen, "a photo of a red guitar", "red guitar",
                                                style_model, vision, tiny_vae, images(2), 64).args[0]
    with pytest.raises(ValueError) as error:
        sample(model, positive, encode(tiny_clip, ""), 3)
    assert_names(error, "AlignGen Conditioning", "batch of 2 reference images", "latent batch of 3",
                 "one AlignGen Conditioning per reference image", "as many reference images as the latent batch")
    assert torch.isfinite(sample(model, positive, encode(tiny_clip, ""), 2)).all()


def aligngen_copy(models_dir, name, change):
    """The tiny AlignGen file, metadata kept, with `change(tensors)` applied, saved as models/aligngen/`name`."""
    source = str(models_dir / ALIGNGEN_FILE)
    tensors = load_file(source)
    with safe_open(source, "pt") as handle:
        metadata = handle.metadata()
    change(tensors)
    save_file(tensors, str(models_dir / "aligngen" / name), metadata=metadata)


# ---- LoRA shapes ----

DOWN_SUFFIXES = (".down.weight", ".lora_A.weight", ".lora_down.weight")


def widened_copy(source, target):
    """`source` with the first LoRA down matrix one input column wider; returns (key, its new shape)."""
    tensors = load_file(str(source))
    key = next(k for k in sorted(tensors) if k.endswith(DOWN_SUFFIXES))
    down = tensors[key]
    tensors[key] = torch.cat([down, torch.zeros(down.shape[0], 1, dtype=down.dtype)], dim=1)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target))
    return key, list(tensors[key].shape)


@pytest.mark.parametrize("slot, source", [
    ("dreamo", "dreamo/dreamo.safetensors"),            # DreamO's original keys (converted on load)
    ("cfg_distill", "dreamo/comfyui/dreamo_cfg_distill_comfyui.safetensors"),  # BFL fused keys
    ("turbo", TURBO_FILE),                              # diffusers keys, a user's file in models/loras
    ("sft", SFT_FILE),                                  # diffusers keys
    ("dpo", DPO_FILE),                                  # kohya keys
])
def test_dreamo_lora_of_the_wrong_shape_is_refused_before_any_patch(tiny_flux, models_dir, slot, source):
    folder = "loras" if slot == "turbo" else "dreamo"
    key, shape = widened_copy(models_dir / source, models_dir / folder / "wrong_shape.safetensors")
    before = {k: list(v) for k, v in tiny_flux.patches.items()}
    args = {"dreamo_file": "wrong_shape.safetensors"} if slot == "dreamo" else {
        f"{slot}_lora": "wrong_shape.safetensors", f"{slot}_strength": 1.0}
    with pytest.raises(ValueError) as error:
        load_dreamo(tiny_flux, **args)
    assert_names(error, "wrong_shape.safetensors", "does not fit", f"down [4, {shape[1]}]", "of shape [",
                 "diffusion_model.", "Nothing was applied", "pick a LoRA for this FLUX model")
    if slot != "dreamo":  # DreamO's original keys are named as converted for ComfyUI's loader (diffusers names)
        assert f"LoRA {key.rsplit('.', 2)[0]} (" in str(error.value)
    assert {k: list(v) for k, v in tiny_flux.patches.items()} == before  # the input MODEL is untouched


@pytest.mark.parametrize("key, shape", [
    ("aligngen.lora.transformer_blocks.0.attn.to_qkv.lora_up.weight", (190, 4)),      # rows short of q|k|v
    ("aligngen.lora.single_transformer_blocks.1.attn.to_qkv.lora_down.weight", (4, 63)),
    ("aligngen.lora.transformer_blocks.1.attn.to_out.0.lora_up.weight", (64, 3)),     # rank disagrees with down
])
def test_aligngen_lora_of_the_wrong_shape_is_refused(tiny_flux, models_dir, key, shape):
    aligngen_copy(models_dir, "wrong_shape.safetensors", lambda tensors: tensors.update({key: torch.zeros(shape)}))
    before = {k: list(v) for k, v in tiny_flux.patches.items()}
    with pytest.raises(ValueError) as error:
        AlignGenLoader.execute(tiny_flux, "wrong_shape.safetensors", 1.0)
    module = key.rsplit(".lora_", 1)[0]
    assert_names(error, "wrong_shape.safetensors", module, "does not fit", str(list(shape)), "different FLUX",
                 "Nothing was applied")
    assert {k: list(v) for k, v in tiny_flux.patches.items()} == before
    assert not tiny_flux.get_wrappers("diffusion_model", "refcustom_aligngen")


# ---- broken weight files ----

def test_nan_weights_in_a_dreamo_file_are_refused(tiny_flux, models_dir):
    tensors = load_file(str(models_dir / "dreamo" / "dreamo.safetensors"))
    key = sorted(tensors)[3]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = NAN
    save_file(tensors, str(models_dir / "dreamo" / "dreamo_nan.safetensors"))
    with pytest.raises(ValueError) as error:
        load_dreamo(tiny_flux, dreamo_file="dreamo_nan.safetensors")
    assert_names(error, "dreamo_nan.safetensors", f"tensor {key}", "NaN/inf", "download it again")


def test_nan_weights_in_an_aligngen_file_are_refused(tiny_flux, models_dir):
    def poison(tensors):
        tensors["aligngen.learned_token"] = torch.full_like(tensors["aligngen.learned_token"], math.inf)

    aligngen_copy(models_dir, "aligngen_inf.safetensors", poison)
    with pytest.raises(ValueError) as error:
        AlignGenLoader.execute(tiny_flux, "aligngen_inf.safetensors", 1.0)
    assert_names(error, "aligngen_inf.safetensors", "tensor aligngen.learned_token", "NaN/inf",
                 "export it from an earlier checkpoint")


@pytest.mark.parametrize("write, what", [
    (lambda path: torch.save({"w": torch.ones(2)}, path), "zipped pickle"),
    (lambda path: path.write_bytes(pickle.dumps({"w": [1.0]}, protocol=2)), "Python pickle"),
])
def test_a_pickle_renamed_safetensors_is_named_as_such(tiny_flux, models_dir, write, what):
    write(models_dir / "dreamo" / "renamed.safetensors")
    with pytest.raises(ValueError) as error:
        load_dreamo(tiny_flux, dreamo_file="renamed.safetensors")
    assert_names(error, "renamed.safetensors is not a safetensors file", what, "renamed to .safetensors",
                 "Get the .safetensors release")
