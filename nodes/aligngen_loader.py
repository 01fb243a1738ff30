"""Load an AlignGen file (exported by `python -m refcustom.train`, aligngen mode) onto a FLUX MODEL."""

from __future__ import annotations

import comfy.patcher_extension
import comfy.utils
from comfy_api.latest import io

from ..model.aligngen_weights import AlignGenWeights, read_aligngen_file
from .aligngen_patch import ALIGNGEN_WRAPPER_KEY, AlignGenWrapper, with_reference_lora
from .dreamo_loader import require_flux
from .model_folders import file_options, resolve_file

ALIGNGEN_FOLDER = "aligngen"

AlignGenWeightsType = io.Custom("REFCUSTOM_ALIGNGEN")


def apply_aligngen(model, weights: AlignGenWeights, strength: float):
    """Clone of `model` with the reference-only LoRA object patches and the per-pass wrapper."""
    diffusion_model = require_flux(model, "AlignGen")
    if model.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, ALIGNGEN_WRAPPER_KEY):
        raise ValueError("this MODEL already has AlignGen loaded; use one Load AlignGen node per model.")
    if weights.dem.config["text_dim"] != diffusion_model.params.context_in_dim:
        raise ValueError(
            f"{weights.path.name} was trained with a {weights.dem.config['text_dim']}-wide T5, but this FLUX takes "
            f"{diffusion_model.params.context_in_dim}-wide text: it belongs to a different model."
        )
    patched = model.clone()
    for lora in weights.loras:
        name = f"diffusion_model.{lora.target}"
        try:
            linear = model.get_model_object(name)
        except AttributeError as error:
            raise ValueError(f"{weights.path.name}: this FLUX has no {lora.target}; the file is for a deeper model") from error
        patched.add_object_patch(name, with_reference_lora(linear, lora.down, lora.up, weights.lora_scale * strength))
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, ALIGNGEN_WRAPPER_KEY,
                                 AlignGenWrapper())
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
        progress = comfy.utils.ProgressBar(2)  # read the file (the DEM is ~1 GB at FLUX width), patch the model
        weights = read_aligngen_file(resolve_file(
            aligngen_file, ALIGNGEN_FOLDER,
            "Train one with `python -m refcustom.train train --config train/configs/aligngen_flux1_dev.yaml`."))
        progress.update(1)
        patched = apply_aligngen(model, weights, lora_strength)
        progress.update(1)
        return io.NodeOutput(patched, weights)
