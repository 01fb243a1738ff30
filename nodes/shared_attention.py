"""The Masked Shared Attention node (SynCD): images of one batch share their foreground."""

from __future__ import annotations

import comfy.patcher_extension
from comfy_api.latest import io

from .dreamo_loader import require_flux
from .shared_attention_patch import SHARED_ATTENTION_KEY, SharedAttentionSettings, SharedAttentionWrapper


class MaskedSharedAttentionNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RefCustom_MaskedSharedAttention",
            display_name="Masked Shared Attention (SynCD)",
            category="refcustom/attention",
            is_experimental=True,
            description=(
                "Makes the images of one batch consistent: each image's image tokens also attend to the foreground "
                "tokens of the other images (never their text or background), SynCD's Masked Shared Attention. "
                "Works on any FLUX-family model, with DreamO references and batch 2..4+."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Mask.Input("mask", tooltip="One subject mask per image of the batch (1 = the shared object), any "
                                               "pixel size; area-downsampled to the 16 px token grid."),
                io.Int.Input("dilation", default=9, min=1, max=31, step=2,
                             tooltip="Square dilation of the token mask (SynCD: 9 for rigid objects); 1 = none."),
                io.Int.Input("full_shared_steps", default=1, min=0, max=1000,
                             tooltip="The first N steps share every image token (SynCD: the first step); 0 = masks "
                                     "from the start."),
                io.Boolean.Input("patch_negative", default=False,
                                 tooltip="Also share attention in the negative (uncond) branch of CFG. Off = the "
                                         "negative runs unpatched."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, mask, dilation, full_shared_steps, patch_negative) -> io.NodeOutput:
        require_flux(model, "Masked Shared Attention")
        if dilation % 2 == 0:
            raise ValueError(f"dilation must be odd (a centred square), got {dilation}")
        masks = mask if mask.ndim == 3 else mask.unsqueeze(0)
        settings = SharedAttentionSettings(masks=masks.float().cpu(), dilation=dilation,
                                           full_shared_steps=full_shared_steps, patch_negative=patch_negative)
        patched = model.clone()
        patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, SHARED_ATTENTION_KEY)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, SHARED_ATTENTION_KEY,
                                     SharedAttentionWrapper(settings))
        return io.NodeOutput(patched)
