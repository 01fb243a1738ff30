"""Attach one DreamO reference image to a CONDITIONING (chain the node for up to 9)."""

from __future__ import annotations

import comfy.conds
from comfy_api.latest import io

from ..model.dreamo_conditioning import MAX_REFERENCES, DreamOReference, DreamOReferenceSet
from ..model.reference_preprocess import TASKS, prepare_reference
from .conditioning_edit import with_diagonal_reference
from .dreamo_patch import DREAMO_COND_KEY
from .reference_encoding import encode_with_progress, require_finite_latent


def dreamo_references_of(cond: dict) -> DreamOReferenceSet:
    entry = cond.get("model_conds", {}).get(DREAMO_COND_KEY)
    return entry.cond if entry is not None else DreamOReferenceSet()


def with_dreamo_reference(conditioning: list, latent, index: int) -> list:
    """A copy of `conditioning` with `latent` appended as DreamO reference `index` (0 = next free)."""
    out = []
    for embedding, cond in conditioning:
        references = dreamo_references_of(cond)
        cond, slot = with_diagonal_reference(cond, latent, "DreamO")
        if len(references.references) >= MAX_REFERENCES:
            raise ValueError(
                f"too many references: DreamO tells at most {MAX_REFERENCES} apart (index rows 1..{MAX_REFERENCES}) and "
                f"this conditioning already has {len(references.references)}. Remove a DreamO reference node."
            )
        chosen = index if index > 0 else references.next_index()
        references = references.added(DreamOReference(index=chosen, slot=slot, batch=latent.shape[0]))
        cond["model_conds"] = {**cond.get("model_conds", {}), DREAMO_COND_KEY: comfy.conds.CONDConstant(references)}
        out.append([embedding, cond])
    return out


class DreamOReferenceNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RefCustom_DreamOReference",
            display_name="DreamO Reference",
            category="refcustom/dreamo",
            description=(
                "Adds one reference image to a conditioning for DreamO: preprocesses it per task, VAE-encodes it and "
                "appends it to the image tokens in DreamO's diagonal layout. Chain up to 9. The negative prompt stays "
                "free of references (DreamO's true negative). A batch of reference images pairs with a batch of latents."
            ),
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The positive prompt (chain from another DreamO Reference)."),
                io.Vae.Input("vae", tooltip="The FLUX VAE (ae.safetensors)."),
                io.Image.Input("image", tooltip="The reference image."),
                io.Combo.Input("task", options=list(TASKS), default="ip",
                               tooltip="ip: subject/character; try-on: garment; id: face crop (resized to 512, ref_res "
                                       "ignored); style: whole image, no background handling (prompt should start with "
                                       "'generate a same style image.')."),
                io.Int.Input("ref_res", default=512, min=64, max=2048, step=16,
                             tooltip="Area resolution of the reference (its pixel count ~ ref_res^2, sides multiples of "
                                     "16). Official default 512; raise for fine text or detail."),
                io.Int.Input("index", default=0, min=0, max=MAX_REFERENCES,
                             tooltip="DreamO reference index k, matched by [ref#k] in the prompt. 0 = next free index "
                                     "(1 for the first node in a chain, then 2, ...)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Subject mask (1 = keep) of this image, e.g. from a background-removal node: the "
                                      "background is whitened as DreamO's BEN2 step does. For LoadImage alpha masks use "
                                      "InvertMask. Not allowed for style."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="conditioning"),
                io.Image.Output(display_name="preprocessed", tooltip="The reference as DreamO sees it."),
            ],
        )

    @classmethod
    def execute(cls, conditioning, vae, image, task, ref_res, index, mask=None) -> io.NodeOutput:
        prepared = prepare_reference(image, task, ref_res, mask)
        latent = require_finite_latent(encode_with_progress(vae, prepared))
        return io.NodeOutput(with_dreamo_reference(conditioning, latent, index), prepared)
