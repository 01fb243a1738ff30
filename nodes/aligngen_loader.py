"""Load an AlignGen file (exported by `python -m refcustom.train`, aligngen mode) onto a FLUX MODEL.

The MODEL gets the reference-only LoRA (a per-pass wrapper, nodes/aligngen_patch.py). The ALIGNGEN output
carries S* and the Deviation Extraction Module, which AlignGen Conditioning runs once per prompt. The DEM
is a model ComfyUI manages like its text encoders: a ModelPatcher on the text encoders' devices, weights
in their dtype, built from ComfyUI's manual-cast ops, so its free-memory logic, --lowvram (weights cast
per forward when only part fits) and /free act on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.utils
from comfy_api.latest import io

from ..model.aligngen_weights import AlignGenWeights, read_aligngen_file
from .aligngen_patch import ALIGNGEN_WRAPPER_KEY, AlignGenWrapper, ReferenceLoRAHooks
from .dreamo_loader import require_flux
from .input_checks import require_finite_floats
from .model_folders import file_options, resolve_file

ALIGNGEN_FOLDER = "aligngen"

AlignGenWeightsType = io.Custom("REFCUSTOM_ALIGNGEN")


@dataclass(frozen=True)
class LoadedAlignGen:
    """The ALIGNGEN socket: the file's weights and its DEM as a ComfyUI-managed model (`dem.model` is
    `weights.dem`)."""

    weights: AlignGenWeights
    dem: comfy.model_patcher.ModelPatcher


def dem_devices() -> tuple:
    """(load device, offload device, dtype): where and how ComfyUI keeps its text encoders."""
    mm = comfy.model_management
    load_device = mm.text_encoder_device()
    return load_device, mm.text_encoder_offload_device(), mm.text_encoder_dtype(load_device)


def managed(weights: AlignGenWeights) -> LoadedAlignGen:
    """`weights` with its DEM under a ModelPatcher (loaded by load_models_gpu when AlignGen Conditioning runs)."""
    load_device, offload_device, _ = dem_devices()
    return LoadedAlignGen(weights, comfy.model_patcher.ModelPatcher(weights.dem.to(offload_device),
                                                                    load_device=load_device,
                                                                    offload_device=offload_device))


def read_managed_aligngen(path) -> LoadedAlignGen:
    """Read an AlignGen file with its DEM built from ComfyUI's manual-cast ops in the text encoders' dtype."""
    _, _, dtype = dem_devices()
    return managed(read_aligngen_file(path, operations=comfy.ops.manual_cast, dem_dtype=dtype))


def apply_aligngen(model, weights: AlignGenWeights, strength: float):
    """Clone of `model` with the per-pass wrapper that adds the reference-only LoRA and the selective mask.

    No module of the model is touched here: the LoRA is added by hooks that live for one pass."""
    diffusion_model = require_flux(model, "AlignGen")
    if model.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, ALIGNGEN_WRAPPER_KEY):
        raise ValueError("this MODEL already has AlignGen loaded; use one Load AlignGen node per model.")
    if weights.dem.config["text_dim"] != diffusion_model.params.context_in_dim:
        raise ValueError(
            f"{weights.path.name} was trained with a {weights.dem.config['text_dim']}-wide T5, but this FLUX takes "
            f"{diffusion_model.params.context_in_dim}-wide text: it belongs to a different model."
        )
    loras = []
    for lora in weights.loras:
        try:
            linear = diffusion_model.get_submodule(lora.target)
        except AttributeError as error:
            raise ValueError(f"{weights.path.name}: this FLUX has no {lora.target}; the file is for a deeper model") from error
        out_features, in_features = linear.weight.shape[:2]  # the stored shape, whatever the stored dtype
        # Single blocks fuse q|k|v with the MLP input in linear1: the LoRA covers the q|k|v rows only.
        rows = 3 * diffusion_model.hidden_size if lora.target.endswith(".linear1") else out_features
        if (lora.up.ndim != 2 or lora.down.ndim != 2 or lora.up.shape[1] != lora.down.shape[0]
                or [lora.up.shape[0], lora.down.shape[1]] != [rows, in_features]):
            raise ValueError(
                f"{weights.path.name}: AlignGen LoRA {lora.key or lora.target} of shape up {list(lora.up.shape)} x "
                f"down {list(lora.down.shape)} does not fit {lora.target} (needs up [{rows}, rank] x down "
                f"[rank, {in_features}]; weight {[out_features, in_features]}): it was trained on a different FLUX. "
                "Nothing was applied; use an AlignGen file trained on this model."
            )
        if strength != 0:  # 0 = off: no hook at all
            loras.append((lora.target, lora.down, lora.up * (weights.lora_scale * strength)))
    hooks = ReferenceLoRAHooks(tuple(loras))
    patched = model.clone()
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, ALIGNGEN_WRAPPER_KEY,
                                 AlignGenWrapper(hooks))
    # The LoRA matrices cast for the sampling device are dropped when ComfyUI cleans up after sampling.
    patched.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, ALIGNGEN_WRAPPER_KEY, hooks.release)
    return patched


class AlignGenLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RefCustom_AlignGenLoader",
            display_name="Load AlignGen (FLUX)",
            category="refcustom/aligngen",
            description=(
                "Loads an AlignGen file trained with refcustom's trainer (there are no public AlignGen weights): the "
                "reference-only LoRA goes onto the MODEL; S* and the Deviation Extraction Module come out as ALIGNGEN "
                "for AlignGen Conditioning. Paper: AlignGen, cross-modality prior alignment."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The FLUX.1-dev model the AlignGen file was trained on."),
                io.Combo.Input("aligngen_file", options=file_options(ALIGNGEN_FOLDER),
                               tooltip="aligngen_lora.safetensors from the trainer; searched in models/aligngen and "
                                       "models/loras."),
                io.Float.Input("lora_strength", default=1.0, min=-2.0, max=2.0, step=0.01,
                               tooltip="Weight of the reference-only LoRA (1 = as trained; 0 = off)."),
            ],
            outputs=[io.Model.Output(display_name="MODEL"),
                     AlignGenWeightsType.Output(display_name="ALIGNGEN", tooltip="For AlignGen Conditioning.")],
        )

    @classmethod
    def execute(cls, model, aligngen_file, lora_strength) -> io.NodeOutput:
        require_finite_floats(cls, {"lora_strength": lora_strength})
        progress = comfy.utils.ProgressBar(2)  # read the file (the DEM is ~1 GB at FLUX width), patch the model
        aligngen = read_managed_aligngen(resolve_file(
            aligngen_file, ALIGNGEN_FOLDER,
            "Train one with `python -m refcustom.train train --config train/configs/aligngen_flux1_dev.yaml`."))
        progress.update(1)
        patched = apply_aligngen(model, aligngen.weights, lora_strength)
        progress.update(1)
        return io.NodeOutput(patched, aligngen)
