"""The Masked Shared Attention node (SynCD): images of one batch share their foreground."""

from __future__ import annotations

import comfy.patcher_extension
from comfy_api.latest import io

from ..model.reference_preprocess import check_reference_size
from .dreamo_loader import require_flux
from .input_checks import require_finite_floats
from .shared_attention_patch import (
    SHARED_ATTENTION_KEY,
    ReferenceEncodeWrapper,
    ReferenceImages,
    SharedAttentionSettings,
    SharedAttentionWrapper,
)


def with_shared_attention(model, settings: SharedAttentionSettings):
    """A clone of `model` whose shared-attention wrappers (if any) are replaced by ones with `settings`."""
    wrappers = comfy.patcher_extension.WrappersMP
    patched = model.clone()
    patched.remove_wrappers_with_key(wrappers.DIFFUSION_MODEL, SHARED_ATTENTION_KEY)
    patched.remove_wrappers_with_key(wrappers.OUTER_SAMPLE, SHARED_ATTENTION_KEY)
    patched.add_wrapper_with_key(wrappers.DIFFUSION_MODEL, SHARED_ATTENTION_KEY, SharedAttentionWrapper(settings))
    if settings.references is not None:
        patched.add_wrapper_with_key(wrappers.OUTER_SAMPLE, SHARED_ATTENTION_KEY,
                                     ReferenceEncodeWrapper(settings.references))
    return patched


def subject_word_positions(clip, prompt: str, subject_words: str) -> tuple[int, ...]:
    """T5 positions of each comma-separated subject word inside the tokenized prompt."""
    words = [w.strip() for w in subject_words.split(",") if w.strip()]
    if clip is None or not prompt.strip() or not words:
        raise ValueError(
            "Masked Shared Attention without a MASK needs clip, prompt and subject_words (e.g. 'rabbit') to estimate "
            "the shared region; or connect one MASK per image."
        )
    tokenizer = getattr(clip.tokenizer, "t5xxl", None)
    if tokenizer is None:
        raise TypeError("estimating masks from the prompt needs FLUX's T5 text encoder (DualCLIPLoader, type flux).")

    def ids(text):
        return [t for t, *_ in clip.tokenize(text)["t5xxl"][0] if t not in (tokenizer.end_token, tokenizer.pad_token)]

    prompt_ids = ids(prompt)
    positions = []
    for word in words:
        word_ids = ids(word)
        starts = [i for i in range(len(prompt_ids) - len(word_ids) + 1) if prompt_ids[i:i + len(word_ids)] == word_ids]
        if not word_ids or not starts:
            raise ValueError(f"subject word {word!r} is not in the prompt's tokens; use a word exactly as the prompt has it.")
        for start in starts:
            positions += range(start, start + len(word_ids))
    return tuple(sorted(set(positions)))


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
                io.Model.Input("model", tooltip="The FLUX-family model whose batch should share attention."),
                io.Mask.Input("mask", optional=True,
                              tooltip="One subject mask per image of the batch (1 = the shared object), any pixel size; "
                                      "area-downsampled to the 16 px token grid. Without it, give clip, prompt and "
                                      "subject_words and the mask is estimated each step."),
                io.Clip.Input("clip", optional=True, tooltip="Only without a mask: the text encoder of the prompt."),
                io.String.Input("prompt", optional=True, multiline=True, default="",
                                tooltip="Only without a mask: the positive prompt, exactly as encoded."),
                io.String.Input("subject_words", optional=True, default="",
                                tooltip="Only without a mask: the subject's words in the prompt (comma-separated). The "
                                        "double blocks' attention to them, Otsu-thresholded (10 bins) and dilated 3x3, "
                                        "is the mask the single blocks share, rebuilt every step (SynCD's deformable path)."),
                io.Int.Input("dilation", default=9, min=1, max=31, step=2,
                             tooltip="Square dilation of the token mask (SynCD: 9 for rigid objects); 1 = none."),
                io.Int.Input("full_shared_steps", default=1, min=0, max=1000,
                             tooltip="The first N steps share every image token (SynCD: the first step); 0 = masks "
                                     "from the start."),
                io.Boolean.Input("patch_negative", default=False,
                                 tooltip="Also share attention in the negative (uncond) branch of CFG. Off = the "
                                         "negative runs unpatched."),
                io.Float.Input("full_shared_above_sigma", optional=True, default=0.0, min=0.0, max=1000.0, step=0.01,
                               tooltip="Also share every token while the noise level sigma is at least this (a sigma "
                                       "range instead of a step count; FLUX sigmas run 1 -> 0). 0 = off."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, dilation, full_shared_steps, patch_negative, mask=None, clip=None, prompt="",
                subject_words="", full_shared_above_sigma=0.0) -> io.NodeOutput:
        require_finite_floats(cls, {"full_shared_above_sigma": full_shared_above_sigma})
        require_flux(model, "Masked Shared Attention")
        if dilation % 2 == 0:
            raise ValueError(f"dilation must be odd (a centred square), got {dilation}")
        masks, words = None, ()
        if mask is not None:
            masks = (mask if mask.ndim == 3 else mask.unsqueeze(0)).float().cpu()
        else:
            words = subject_word_positions(clip, prompt, subject_words)
        settings = SharedAttentionSettings(masks=masks, dilation=dilation, full_shared_steps=full_shared_steps,
                                           full_shared_above_sigma=full_shared_above_sigma,
                                           patch_negative=patch_negative, word_tokens=words)
        return io.NodeOutput(with_shared_attention(model, settings))


class SharedAttentionReferenceNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RefCustom_SharedAttentionReference",
            display_name="Shared Attention Reference (SynCD)",
            category="refcustom/attention",
            is_experimental=True,
            description=(
                "SynCD's reference mode: the reference image(s) are noised to each step's noise level with fresh "
                "noise, run through the same model alongside the batch, and every generated image's image tokens also "
                "attend to the references' foreground tokens. Any FLUX-family model; combines with DreamO references."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The FLUX-family model to sample with; the references run through it too."),
                io.Vae.Input("vae", tooltip="The VAE of this model (encodes the references)."),
                io.Image.Input("reference", tooltip="One or more reference images (a batch). When sampling starts they "
                                                        "are area-resized to the sampled latent's pixel size and "
                                                        "VAE-encoded at that size."),
                io.Mask.Input("reference_mask", optional=True,
                              tooltip="One mask per reference (1 = the object to borrow); none = the whole reference."),
                io.Int.Input("dilation", default=9, min=1, max=31, step=2,
                             tooltip="Square dilation of the reference token masks; 1 = none."),
                io.Int.Input("full_shared_steps", default=1, min=0, max=1000,
                             tooltip="The first N steps borrow every reference token; 0 = masks from the start."),
                io.Boolean.Input("patch_negative", default=False,
                                 tooltip="Also borrow in the negative (uncond) branch. Off = the negative runs unpatched."),
                io.Float.Input("full_shared_above_sigma", optional=True, default=0.0, min=0.0, max=1000.0, step=0.01,
                               tooltip="Also share every token while the noise level sigma is at least this (a sigma "
                                       "range instead of a step count; FLUX sigmas run 1 -> 0). 0 = off."),
                io.Int.Input("noise_seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="Seed of the fresh noise added to the references at each step."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, vae, reference, dilation, full_shared_steps, patch_negative, noise_seed,
                reference_mask=None, full_shared_above_sigma=0.0) -> io.NodeOutput:
        require_finite_floats(cls, {"full_shared_above_sigma": full_shared_above_sigma})
        require_flux(model, "Masked Shared Attention")
        if dilation % 2 == 0:
            raise ValueError(f"dilation must be odd (a centred square), got {dilation}")
        check_reference_size(reference, reference_mask)  # now, not when sampling starts
        # Encoded when sampling starts, at the sampled latent's size (see ReferenceImages).
        references = ReferenceImages(reference[..., :3], vae, model.model.process_latent_in)
        masks = None
        if reference_mask is not None:
            masks = (reference_mask if reference_mask.ndim == 3 else reference_mask.unsqueeze(0)).float().cpu()
            if masks.shape[0] != references.count:
                raise ValueError(f"{masks.shape[0]} reference masks for {references.count} reference images; give one each.")
            if tuple(masks.shape[1:]) != tuple(reference.shape[1:3]):
                raise ValueError(
                    f"the reference mask is {masks.shape[2]}x{masks.shape[1]} but the reference is "
                    f"{reference.shape[2]}x{reference.shape[1]}; use the mask of this image."
                )
        settings = SharedAttentionSettings(masks=None, dilation=dilation, full_shared_steps=full_shared_steps,
                                           full_shared_above_sigma=full_shared_above_sigma,
                                           patch_negative=patch_negative, references=references, reference_masks=masks,
                                           model_sampling=model.get_model_object("model_sampling"),
                                           noise_seed=noise_seed)
        return io.NodeOutput(with_shared_attention(model, settings))
