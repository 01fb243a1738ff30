"""Load DreamO onto a FLUX MODEL: its LoRAs through ComfyUI's own LoRA patching, its embeddings as a wrapper."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.ldm.flux.model
import comfy.lora
import comfy.lora_convert
import comfy.model_base
import comfy.patcher_extension
import comfy.utils
import comfy.weight_adapter
from comfy_api.latest import io

from ..model.dreamo_conditioning import DreamOConditionEmbedding
from ..model.dreamo_weights import DreamOEmbeddingTables, DreamOFile, lora_module_names, read_dreamo_file
from .dreamo_patch import DREAMO_WRAPPER_KEY, DreamOEmbeddingWrapper
from .input_checks import require_finite_floats
from .model_folders import file_options, resolve_file

DREAMO_FOLDER = "dreamo"
NONE = "none"
FROM_MAIN_FILE = "(inside dreamo_file)"

DreamOWeightsType = io.Custom("REFCUSTOM_DREAMO")


@dataclass(frozen=True)
class DreamOWeights:
    """What text encoding needs from a loaded DreamO: the tables and which file they came from."""

    tables: DreamOEmbeddingTables
    source: str


def resolve_weight_file(name: str) -> str:
    return resolve_file(name, DREAMO_FOLDER, "Download it from the ByteDance/DreamO repository into models/dreamo "
                                             "(keep its comfyui/ or v1.1/ subfolder).")


def require_flux(model, what: str = "DreamO") -> comfy.ldm.flux.model.Flux:
    diffusion_model = getattr(model.model, "diffusion_model", None)
    if not isinstance(model.model, comfy.model_base.Flux) or not isinstance(diffusion_model, comfy.ldm.flux.model.Flux):
        raise TypeError(
            f"{what} needs a FLUX.1 model (FLUX.1-dev or a FLUX.1 fine-tune, in any precision); this MODEL is "
            f"{type(model.model).__name__}. Load flux1-dev with UNETLoader or a FLUX checkpoint."
        )
    return diffusion_model


def patch_target_shape(weight_shape, offset) -> list[int]:
    """Shape of the part of a weight a patch covers: all of it, or the slice (dim, start, length) of an offset patch."""
    shape = list(weight_shape)
    if offset is not None:
        shape[offset[0]] = offset[2]
    return shape


def require_lora_shapes(model, patches: dict, key_map: dict, lora: dict, file_name: str) -> None:
    """Refuse, before any patch is added, a LoRA whose matrices do not fit the weights they patch.

    ComfyUI itself only logs a shape mismatch when it merges the weights and samples without that layer.
    key_map: ComfyUI's LoRA-name -> model-key map the patches were loaded with; lora: the LoRA's tensors."""
    weights = model.model.state_dict()
    for key, patch in patches.items():
        name, offset = (key, None) if isinstance(key, str) else (key[0], key[1])
        if name not in weights:
            continue  # counted by the caller as an unmatched layer
        target = patch_target_shape(weights[name].shape, offset)
        if isinstance(patch, comfy.weight_adapter.LoRAAdapter):
            up, down, mid, reshape = patch.weights[0], patch.weights[1], patch.weights[3], patch.weights[5]
            if mid is not None or reshape is not None or len(target) != 2:
                continue  # conv LoRA (LoCon) or a padded weight: not a FLUX linear layer
            got = [up.shape[0], down.flatten(start_dim=1).shape[1]]
            fits = up.ndim == 2 and up.shape[1] == down.shape[0] and got == target
            what = f"up {list(up.shape)} x down {list(down.shape)}"
        elif isinstance(patch, tuple) and patch and patch[0] == "diff":
            got = list(patch[1][0].shape)
            fits, what = got == target or patch[1][0].numel() == 1, f"diff {got}"
        else:
            continue
        if not fits:
            where = f"{name}" + (f" (rows {offset[1]}..{offset[1] + offset[2] - 1})" if offset is not None else "")
            layer = next((prefix for prefix, target_key in key_map.items()
                          if target_key == key and any(k.startswith(prefix + ".") for k in lora)), name)
            raise ValueError(
                f"{file_name}: LoRA {layer} ({what}) does not fit {where} of shape {target}: the LoRA was made for "
                "a different model (another FLUX size or architecture). Nothing was applied; pick a LoRA for this "
                "FLUX model or set its strength to 0."
            )


def apply_lora_file(model, dreamo_file: DreamOFile, strength: float) -> None:
    """Add one LoRA to `model` (already cloned) the way core LoraLoaderModelOnly does, but loudly."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    lora = comfy.lora_convert.convert_lora(dreamo_file.lora)
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    expected = len(lora_module_names(lora))
    if len(patches) < expected:
        raise ValueError(
            f"{dreamo_file.path.name}: only {len(patches)} of its {expected} LoRA layers match this model's weights. "
            "It is not a LoRA for this FLUX model (wrong base model or a different architecture)."
        )
    require_lora_shapes(model, patches, key_map, lora, dreamo_file.path.name)
    model.add_patches(patches, strength)


class DreamOLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = file_options(DREAMO_FOLDER)
        optional_files = [NONE, *files]

        def lora_slot(name, default_strength, what):
            return [
                io.Combo.Input(f"{name}_lora", options=optional_files, default=NONE,
                               tooltip=f"{what} ('none' to skip)."),
                io.Float.Input(f"{name}_strength", default=default_strength, min=-10.0, max=10.0, step=0.01,
                               tooltip=f"Weight of the {name} LoRA; 0 disables it. Official default {default_strength}."),
            ]

        return io.Schema(
            node_id="RefCustom_DreamOLoader",
            display_name="Load DreamO (FLUX)",
            category="refcustom/dreamo",
            description=(
                "Loads the official DreamO files onto a FLUX.1 model: the DreamO LoRA and its condition/index "
                "embeddings, plus the optional cfg-distill, turbo and quality LoRAs, each through ComfyUI's own LoRA "
                "patching (composes with other LoRAs, low-VRAM offloading and quantized models). "
                "Paper: arXiv 2504.16915."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A FLUX.1 model (dev, fp8, GGUF...)."),
                io.Combo.Input("dreamo_file", options=files, default="dreamo.safetensors" if "dreamo.safetensors" in files else None,
                               tooltip="dreamo.safetensors (LoRA + embeddings) or comfyui/dreamo_comfyui.safetensors "
                                       "(LoRA only: then pick embedding.safetensors below). Searched in models/dreamo and models/loras."),
                io.Combo.Input("embedding_file", options=[FROM_MAIN_FILE, *files], default=FROM_MAIN_FILE,
                               tooltip="Where the DreamO embedding tables are: inside dreamo_file (dreamo.safetensors) "
                                       "or embedding.safetensors for the comfyui/ LoRA."),
                io.Float.Input("dreamo_strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Weight of the main DreamO LoRA; 0 keeps only the embeddings."),
                *lora_slot("cfg_distill", 1.0, "dreamo_cfg_distill.safetensors, so no true CFG is needed"),
                *lora_slot("turbo", 1.0, "FLUX.1-Turbo-Alpha (flux-turbo.safetensors) for 12-step sampling"),
                *lora_slot("sft", 1.0, "v1.1/dreamo_sft_lora.safetensors (v1.1 quality)"),
                *lora_slot("dpo", 1.25, "v1.1/dreamo_dpo_lora.safetensors (v1.1 quality)"),
                *lora_slot("quality_pos", 0.15, "dreamo_quality_lora_pos.safetensors (v1 quality)"),
                *lora_slot("quality_neg", -0.8, "dreamo_quality_lora_neg.safetensors (v1 quality)"),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL"),
                DreamOWeightsType.Output(display_name="DREAMO", tooltip="For the DreamO text encoder's [ref#k] placeholders."),
            ],
        )

    @classmethod
    def execute(cls, model, dreamo_file, embedding_file, dreamo_strength, **lora_inputs) -> io.NodeOutput:
        require_finite_floats(cls, {"dreamo_strength": dreamo_strength, **lora_inputs})
        diffusion_model = require_flux(model)
        if model.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, DREAMO_WRAPPER_KEY):
            raise ValueError("this MODEL already has DreamO loaded; use a single Load DreamO node per model.")

        extras = [(slot, lora_inputs[f"{slot}_lora"], lora_inputs[f"{slot}_strength"])
                  for slot in ("cfg_distill", "turbo", "sft", "dpo", "quality_pos", "quality_neg")]
        extras = [(slot, name, strength) for slot, name, strength in extras if name != NONE and strength != 0]
        # One tick per weight file read and applied: the official files are ~0.5 GB each.
        progress = comfy.utils.ProgressBar(2 + len(extras))
        main = read_dreamo_file(resolve_weight_file(dreamo_file))
        if embedding_file == FROM_MAIN_FILE:
            tables = main.embeddings
            if tables is None:
                raise ValueError(
                    f"{dreamo_file} holds no DreamO embedding tables (dreamo_task_embedding / dreamo_idx_embedding). "
                    "Pick dreamo.safetensors, or keep this LoRA and set embedding_file to embedding.safetensors."
                )
            source = dreamo_file
        else:
            tables = read_dreamo_file(resolve_weight_file(embedding_file)).embeddings
            if tables is None:
                raise ValueError(f"{embedding_file} holds no DreamO embedding tables; pick embedding.safetensors.")
            source = embedding_file
        if tables.hidden_size != diffusion_model.hidden_size:
            raise ValueError(
                f"the DreamO embeddings in {source} are {tables.hidden_size} wide but this FLUX model's hidden size "
                f"is {diffusion_model.hidden_size}: these DreamO weights are for a different model."
            )

        progress.update(1)
        patched = model.clone()
        if main.lora is not None and dreamo_strength != 0:
            apply_lora_file(patched, main, dreamo_strength)
        elif main.lora is None and dreamo_strength != 0:
            raise ValueError(f"{dreamo_file} has no LoRA; pick dreamo.safetensors or comfyui/dreamo_comfyui.safetensors.")
        progress.update(1)
        for slot, name, strength in extras:
            extra = read_dreamo_file(resolve_weight_file(name))
            if extra.lora is None:
                raise ValueError(f"{name} (chosen as the {slot} LoRA) holds no LoRA weights.")
            apply_lora_file(patched, extra, strength)
            logging.info("refcustom: DreamO %s LoRA %s at %.2f", slot, name, strength)
            progress.update(1)

        embedding = DreamOConditionEmbedding(tables.hidden_size)
        embedding.load_state_dict({k: v.float() for k, v in tables.condition_state_dict().items()})
        embedding.requires_grad_(False)
        patched.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, DREAMO_WRAPPER_KEY, DreamOEmbeddingWrapper(embedding)
        )
        return io.NodeOutput(patched, DreamOWeights(tables=tables, source=source))
