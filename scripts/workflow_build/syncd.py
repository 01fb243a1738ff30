"""SynCD workflows: normalized guidance on FLUX Kontext, a consistent batch, shared-attention reference mode.

NORMALIZED_SCALES_NOTE / NORMALIZED_NOTE explain normalized guidance; the DreamO and AlignGen variants reuse them.
"""

from __future__ import annotations

from .blocks import CLIP_L, FLUX_UNET, FLUX_VAE, POSITIVE_COLOR, T5, custom_sampler_tail, flux_loaders, ksampler_tail
from .graph import Graph

NORMALIZED_SCALES_NOTE = (
    "Normalized guidance (SynCD): Guidance Branches turns the one positive (prompt + references) into image_only "
    "(same references, empty prompt) and negative (empty prompt, no references). The guider combines the three "
    "predictions per step as image_only + s_I (image_only - negative) + s_T (positive - image_only), after scaling "
    "the larger of the two directions down to the smaller one's norm (per image). s_I ramps from image_scale by "
    "image_scale_increase over sampling. Set normalize off to compare with plain dual guidance.\n"
    "The paper's scales (7.5 / 8 / +5) were for SDXL; guidance-distilled FLUX wants small ones: start near "
    "text 2.0, image 1.5, increase 1.0."
)
NORMALIZED_NOTE = NORMALIZED_SCALES_NOTE + " Three model passes per step (positive and image_only share one batched call)."


KONTEXT_UNET = "flux1-kontext-dev.safetensors"


def wf_kontext_normalized() -> Graph:
    intro = (
        "FLUX.1 Kontext editing with SynCD normalized guidance: core ReferenceLatent carries the input image, and "
        "Guidance Branches / the normalized guider balance following the image against following the instruction. "
        "No DreamO here: the guider works with any reference mechanism on the conditioning.\n" + NORMALIZED_NOTE +
        f"\n\nFiles: diffusion_models/{KONTEXT_UNET} (black-forest-labs/FLUX.1-Kontext-dev), text_encoders/{T5}, "
        f"text_encoders/{CLIP_L}, vae/{FLUX_VAE}. Input image: copy custom_nodes/refcustom/workflows/inputs/* into "
        "ComfyUI/input/."
    )
    g = Graph("kontext_normalized_guidance", "FLUX Kontext + SynCD normalized image/text guidance", intro)
    unet, clip, vae = flux_loaders(g, KONTEXT_UNET, "Load FLUX.1 Kontext")
    prompt = g.add("CLIPTextEncode", "Instruction", POSITIVE_COLOR, clip=clip[0],
                   text="put the toy on a sunny beach, keep its colours and shape")
    image = g.add("LoadImage", "Image to edit", None, image="refcustom_subject.png")
    scaled = g.add("FluxKontextImageScale", None, None, image=image[0])
    encoded = g.add("VAEEncode", None, None, pixels=scaled[0], vae=vae[0])
    reference = g.add("ReferenceLatent", None, None, conditioning=prompt[0], latent=encoded[0])
    guided = g.add("FluxGuidance", None, None, conditioning=reference[0], guidance=2.5)
    branches = g.add("RefCustom_GuidanceBranches", None, None, positive=guided[0], clip=clip[0], neutral_prompt="")
    guider = g.add("RefCustom_NormalizedGuidanceGuider", None, None, model=unet[0], positive=guided[0],
                   image_only=branches[0], negative=branches[1], text_scale=2.0, image_scale=1.5,
                   image_scale_increase=1.0, normalize=True)
    custom_sampler_tail(g, unet[0], vae[0], guider[0], 20)
    return g


def wf_consistent_batch() -> Graph:
    intro = (
        "SynCD Masked Shared Attention: a batch of 4 images from one prompt whose subject stays the same. Each "
        "image's image tokens also attend to the other images' tokens inside the mask (never their text or "
        "background); the first step shares everything. The mask here is a centred box where the subject should "
        "stand, the same for all 4 images (built from core mask nodes and repeated to the batch); a segmentation "
        "mask per image works better when you have one (any pixel size, one per image, in batch order).\n"
        "No mask? Leave `mask` unconnected and give clip, the prompt and the subject's words (subject_words): the mask is then "
        "estimated every step from the prompt's cross-attention. To borrow from a reference image instead, see "
        "syncd_reference. Experimental.\n\n"
        f"Files: diffusion_models/{FLUX_UNET}, text_encoders/{T5}, text_encoders/{CLIP_L}, vae/{FLUX_VAE}."
    )
    g = Graph("syncd_consistent_batch", "SynCD Masked Shared Attention: a consistent batch of 4", intro)
    unet, clip, vae = flux_loaders(g)
    background = g.add("SolidMask", "Mask: background", None, value=0.0, width=1024, height=1024)
    box = g.add("SolidMask", "Mask: subject box", None, value=1.0, width=512, height=640)
    mask = g.add("MaskComposite", "Centred subject box", None, destination=background[0], source=box[0], x=256, y=192,
                 operation="add")
    as_image = g.add("MaskToImage", None, None, mask=mask[0])
    repeated = g.add("RepeatImageBatch", "One mask per image (4)", None, image=as_image[0], amount=4)
    masks = g.add("ImageToMask", None, None, image=repeated[0], channel="red")
    shared = g.add("RefCustom_MaskedSharedAttention", None, None, model=unet[0], mask=masks[0], dilation=9,
                   full_shared_steps=1, patch_negative=False)
    prompt = g.add("CLIPTextEncode", "Prompt", POSITIVE_COLOR, clip=clip[0],
                   text="a plush toy rabbit with a red scarf sitting in a sunny garden, photo")
    ksampler_tail(g, {"clip": clip, "vae": vae}, prompt[0], 20, model=shared[0], guidance=3.5, batch_size=4)
    return g


def wf_shared_reference() -> Graph:
    intro = (
        "SynCD reference mode: the reference image is noised to each step's noise level with fresh (seeded) noise, "
        "runs through the same model next to the batch, and each generated image's image tokens also attend to "
        "the reference's tokens (all of them in the first step, then the reference_mask's foreground; without a "
        "mask, the whole reference). Connect a subject mask of the reference (1 = object) to borrow only the "
        "object. Works on plain FLUX as here, and on a DreamO-patched MODEL.\n"
        "Experimental.\n\n"
        f"Files: diffusion_models/{FLUX_UNET}, text_encoders/{T5}, text_encoders/{CLIP_L}, vae/{FLUX_VAE}. "
        "Input image: copy custom_nodes/refcustom/workflows/inputs/* into ComfyUI/input/."
    )
    g = Graph("syncd_reference", "SynCD shared-attention reference mode (batch of 2)", intro)
    unet, clip, vae = flux_loaders(g)
    image = g.add("LoadImage", "Reference image", None, image="refcustom_subject.png")
    shared = g.add("RefCustom_SharedAttentionReference", None, None, model=unet[0], vae=vae[0], reference=image[0],
                   dilation=9, full_shared_steps=1, patch_negative=False, noise_seed=0)
    prompt = g.add("CLIPTextEncode", "Prompt", POSITIVE_COLOR, clip=clip[0],
                   text="a toy robot standing on a sunny beach, photo")
    ksampler_tail(g, {"clip": clip, "vae": vae}, prompt[0], 20, model=shared[0], guidance=3.5, batch_size=2)
    return g
