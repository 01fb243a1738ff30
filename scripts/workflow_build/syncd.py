"""SynCD workflows: normalized guidance on FLUX Kontext, a consistent batch, shared-attention reference mode.

NORMALIZED_WHAT / NORMALIZED_SETTINGS explain normalized guidance; the DreamO and AlignGen variants reuse them.
"""

from __future__ import annotations

from .blocks import POSITIVE_COLOR, SEED, custom_sampler_tail, flux_loaders, ksampler_tail, read_me
from .graph import Graph

NORMALIZED_WHAT = (
    "Guidance Branches turns the one positive (prompt + references) into `image_only` (the same references, an "
    "empty prompt) and `negative` (empty prompt, no references); the Normalized Image+Text Guider combines the "
    "three predictions per step as image_only + s_I (image_only - negative) + s_T (positive - image_only), after "
    "scaling the larger of the two directions down to the smaller one's norm (per image)."
)
NORMALIZED_SETTINGS = [
    "`text_scale` (s_T) 2.0 and `image_scale` (s_I) 1.5, s_I ramping up by `image_scale_increase` 1.0 over "
    "sampling. Guidance-distilled FLUX wants small scales (the paper's 7.5 / 8 / +5 were for SDXL). Raise "
    "image_scale to follow the reference more, text_scale to follow the prompt more.",
    "`normalize` off gives plain dual guidance, to compare.",
    "Three model passes per step (positive and image_only share one batched call): about 2x the time of plain "
    "guidance.",
]
SEED_TIP = f"Seed {SEED}, fixed: change it, or set its control to `randomize`, for other variations."


def wf_kontext_normalized() -> Graph:
    what = ("**FLUX.1 Kontext editing with SynCD normalized image/text guidance.** Core ReferenceLatent carries the "
            "image to edit; the normalized guider balances following the image against following the instruction. "
            "No DreamO here: the guider works with any reference mechanism on the conditioning. " + NORMALIZED_WHAT)
    settings = [
        "Instruction: say what to change and what to keep.",
        "FluxKontextImageScale resizes the image to one of Kontext's preferred sizes before it is encoded.",
        *NORMALIZED_SETTINGS,
        "FluxGuidance 2.5 (Kontext's usual value), 20 steps, euler / simple.", SEED_TIP,
    ]
    look = ("The image to edit (with the sample: the toy robot) on a sunny beach, its colours and shape kept, as a "
            "1024x1024 picture. Too high a `text_scale` repaints the subject; too high an `image_scale` changes "
            "too little.")
    g = Graph("kontext_normalized_guidance", "FLUX Kontext + SynCD normalized image/text guidance",
              read_me("kontext_normalized_guidance", what, settings, look))
    g.group_titles["references"] = "Image to edit"
    unet, clip, vae = flux_loaders(g, "flux1-kontext-dev.safetensors", "Load FLUX.1 Kontext")
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


SHARED_SETTINGS = [
    "`dilation` 9 (SynCD's value for rigid objects; 1 = none) grows the mask on the 16 px token grid.",
    "`full_shared_steps` 1: the first step shares every token (SynCD), then only the mask's; 0 = masks from the "
    "start.",
    "`patch_negative` off: the negative branch runs unpatched (it is unused at cfg 1 anyway).",
]


def wf_consistent_batch() -> Graph:
    what = ("**SynCD Masked Shared Attention: a batch of 4 whose subject stays the same.** Each image's image tokens "
            "also attend to the other images' tokens inside the mask (never their text or background). Experimental.")
    settings = [
        "Subject mask: here a centred box where the subject should stand, the same for all 4 images (core mask "
        "nodes, repeated to the batch). A segmentation mask per image works better when you have one (any pixel "
        "size, one per image, in batch order).",
        "No mask? Leave `mask` unconnected and give `clip`, the prompt and the subject's words (`subject_words`): "
        "the mask is then estimated every step from the prompt's cross-attention.",
        *SHARED_SETTINGS,
        "Batch size 4 in the latent (and 4 in One mask per image); FluxGuidance 3.5, 20 steps, cfg 1.", SEED_TIP,
    ]
    look = ("Four 1024x1024 pictures of one plush rabbit with a red scarf in a sunny garden: the rabbit's colours, "
            "scarf and proportions match across the batch, while pose and background vary. Without the patch (bypass "
            "the node) they are four different rabbits. To borrow from a reference image instead, see "
            "`syncd_reference`.")
    g = Graph("syncd_consistent_batch", "SynCD Masked Shared Attention: a consistent batch of 4",
              read_me("syncd_consistent_batch", what, settings, look, input_images=False))
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
    what = ("**SynCD reference mode: a batch of 2 borrows the subject of a reference image.** The reference is "
            "noised to each step's noise level with fresh (seeded) noise and runs through the same model next to the "
            "batch; each generated image's image tokens also attend to the reference's tokens (all of them in the "
            "first step, then the `reference_mask`'s foreground; without a mask, the whole reference). Works on plain "
            "FLUX as here, and on a DreamO-patched MODEL. Experimental.")
    settings = [
        "Connect a subject mask of the reference (1 = object) to `reference_mask` to borrow only the object, not "
        "its background.",
        *SHARED_SETTINGS,
        "`noise_seed`: the seed of the noise added to the reference at each step.",
        "Batch size 2 in the latent; FluxGuidance 3.5, 20 steps, cfg 1.", SEED_TIP,
    ]
    look = ("Two 1024x1024 pictures of a toy robot on a sunny beach that take the reference robot's colours and parts "
            "(red head, blue body, yellow chest panel with the samples); the prompt still sets the scene.")
    g = Graph("syncd_reference", "SynCD shared-attention reference mode (batch of 2)",
              read_me("syncd_reference", what, settings, look))
    unet, clip, vae = flux_loaders(g)
    image = g.add("LoadImage", "Reference image", None, image="refcustom_subject.png")
    shared = g.add("RefCustom_SharedAttentionReference", None, None, model=unet[0], vae=vae[0], reference=image[0],
                   dilation=9, full_shared_steps=1, patch_negative=False, noise_seed=0)
    prompt = g.add("CLIPTextEncode", "Prompt", POSITIVE_COLOR, clip=clip[0],
                   text="a toy robot standing on a sunny beach, photo")
    ksampler_tail(g, {"clip": clip, "vae": vae}, prompt[0], 20, model=shared[0], guidance=3.5, batch_size=2)
    return g
