"""AlignGen Conditioning: S* before the concept name, the DEM over Redux tokens, the reference image.

One node does what AlignGen's pipeline does to a prompt and a reference:
1. writes S* before the concept name (the `concept` field; it must occur in the prompt) and encodes
   the prompt with S*'s trained vector as its T5 input embedding (ComfyUI's embedding mechanism,
   as textual-inversion embeddings are spliced); CLIP-L sees the prompt text as written, with "S*";
2. runs the DEM once, here (not per sampling step): the T5 rows of S* and the concept name attend
   to the reference's Redux tokens (core Redux: StyleModelLoader + CLIPVisionEncode crop "none"),
   and only S*'s row is replaced by the result;
3. VAE-encodes the reference and appends it to the image tokens in the diagonal layout (core
   reference latents, method "uxo"), with the payload that tells the model patch which T5 rows
   are the concept's (the selective mask) and that the last reference is AlignGen's (its LoRA).
"""

from __future__ import annotations

import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io

from ..model.aligngen import insert_learned_token, replace_learned_token
from ..model.reference_preprocess import check_reference_size, prepare_reference
from .aligngen_loader import AlignGenWeightsType
from .aligngen_patch import ALIGNGEN_COND_KEY, AlignGenCond, AlignGenConditioning
from .conditioning_edit import with_diagonal_reference
from .dreamo_text import T5_KEY, _t5_width
from .reference_encoding import require_finite_latent


def _strip_end(batch: list, end_token: int, pad_token: int) -> list:
    """Tokens of one piece without the end token and padding the tokenizer appended."""
    tokens = list(batch)
    while tokens and not hasattr(tokens[-1][0], "shape") and tokens[-1][0] == pad_token:
        tokens.pop()
    if tokens and not hasattr(tokens[-1][0], "shape") and tokens[-1][0] == end_token:
        tokens.pop()
    return tokens


def _t5_piece(clip, text: str, tokenizer) -> list:
    if not text.strip():
        return []
    tokens = []
    for batch in clip.tokenize(text.strip())[T5_KEY]:
        tokens.extend(_strip_end(batch, tokenizer.end_token, tokenizer.pad_token))
    return tokens


def tokenize_with_learned_token(clip, before: str, rest: str, token_text: str, vector: torch.Tensor,
                                concept: str) -> tuple[dict, int, int]:
    """clip.tokenize of "before S* rest", S* being one T5 token with `vector` as input embedding.

    Returns (tokens, row of S*, row after the concept name) in T5's sequence."""
    tokenizer = getattr(clip.tokenizer, T5_KEY, None)
    if tokenizer is None:
        raise TypeError("AlignGen needs FLUX's T5 text encoder (DualCLIPLoader with t5xxl + clip_l, type flux).")
    width = _t5_width(clip)
    if width is not None and width != vector.shape[-1]:
        raise ValueError(f"the AlignGen file's S* is {vector.shape[-1]} wide but this T5 is {width} wide; use the T5-XXL "
                         "the file was trained with.")
    tokens = clip.tokenize(f"{before} {token_text} {rest}".strip())
    head = _t5_piece(clip, before, tokenizer)
    tail = _t5_piece(clip, rest, tokenizer)
    start = len(head)
    t5 = [*head, (vector.float(), 1.0), *tail, (tokenizer.end_token, 1.0)]
    t5.extend([(tokenizer.pad_token, 1.0)] * max(0, (tokenizer.min_length or 0) - len(t5)))
    tokens[T5_KEY] = [t5]
    concept_tokens = len(_t5_piece(clip, concept, tokenizer))
    return tokens, start, start + 1 + concept_tokens


def apply_dem(conditioning: list, dem, start: int, end: int, redux: torch.Tensor) -> list:
    """Replace row `start` of every cond by the DEM's first output row over rows [start, end).

    `dem` is the DEM's ModelPatcher: ComfyUI loads it (all of it, or what fits, the rest cast per forward) as
    it loads a text encoder, once per prompt, never per step, and keeps or frees it with its other models.
    The DEM computes in float32 whatever its weights are stored in (a few tokens: precision is free)."""
    comfy.model_management.load_models_gpu([dem])
    device = dem.load_device
    out = []
    for embedding, cond in conditioning:
        concept_rows = embedding[:, start:end].to(device, torch.float32)
        with torch.no_grad():
            updated = dem.model(concept_rows, redux.to(device, torch.float32))[:, 0]
        positions = torch.full((embedding.shape[0],), start, dtype=torch.long, device=embedding.device)
        out.append([replace_learned_token(embedding, positions, updated.to(embedding)), cond])
    return out


def with_aligngen_reference(conditioning: list, latent: torch.Tensor, start: int, end: int) -> list:
    out = []
    for embedding, cond in conditioning:
        cond, slot = with_diagonal_reference(cond, latent, "AlignGen")
        payload = AlignGenConditioning(concept_start=start, concept_end=end, reference_slot=slot,
                                       reference_batch=latent.shape[0])
        cond["model_conds"] = {**cond.get("model_conds", {}), ALIGNGEN_COND_KEY: AlignGenCond(payload)}
        out.append([embedding, cond])
    return out


class AlignGenConditioningNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RefCustom_AlignGenConditioning",
            display_name="AlignGen Conditioning",
            category="refcustom/aligngen",
            description=(
                "Encodes the prompt with AlignGen's learned token S* before the concept name, aligns S* to the reference "
                "through the Deviation Extraction Module over the reference's Redux tokens (once, not per step), and "
                "appends the reference image's tokens. Use a plain CLIPTextEncode for the negative prompt."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="FLUX text encoders (t5xxl + clip_l)."),
                AlignGenWeightsType.Input("aligngen", tooltip="The ALIGNGEN output of Load AlignGen."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="The prompt; it must contain the concept name, e.g. 'a photo of an acoustic "
                                        "guitar on a beach'. S* is written before the name (or keep yours)."),
                io.String.Input("concept", default="", tooltip="The concept name as written in the prompt, e.g. "
                                                               "'acoustic guitar'."),
                io.StyleModel.Input("style_model", tooltip="FLUX.1 Redux (StyleModelLoader)."),
                io.ClipVisionOutput.Input("clip_vision_output",
                                          tooltip="CLIPVisionEncode (SigLIP, crop 'none') of the reference image."),
                io.Vae.Input("vae", tooltip="The FLUX VAE."),
                io.Image.Input("image", tooltip="The reference image of the concept."),
                io.Int.Input("ref_res", default=512, min=64, max=2048, step=16,
                             tooltip="Area resolution of the reference tokens (sides multiples of 16)."),
                io.Mask.Input("mask", optional=True, tooltip="Subject mask (1 = keep): the background is whitened."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, aligngen, text, concept, style_model, clip_vision_output, vae, image, ref_res,
                mask=None) -> io.NodeOutput:
        if clip is None:
            raise RuntimeError("the CLIP input is empty: load FLUX's text encoders with DualCLIPLoader.")
        check_reference_size(image, mask)  # before the text encoding and the DEM, not only at prepare_reference
        progress = comfy.utils.ProgressBar(3)  # text encoding, the DEM, the reference's VAE encoding
        weights = aligngen.weights
        before, rest = insert_learned_token(text, concept, weights.token_text)
        tokens, start, end = tokenize_with_learned_token(clip, before, rest, weights.token_text,
                                                         weights.learned_token, concept.strip())
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        progress.update(1)
        redux = style_model.get_cond(clip_vision_output).flatten(start_dim=0, end_dim=1).unsqueeze(0)
        if redux.shape[-1] != weights.dem.config["redux_dim"]:
            raise ValueError(f"the Redux tokens are {redux.shape[-1]} wide, the AlignGen DEM expects "
                             f"{weights.dem.config['redux_dim']}: load FLUX.1 Redux (flux1-redux-dev) as style_model.")
        conditioning = apply_dem(conditioning, aligngen.dem, start, end, redux)
        progress.update(1)
        latent = require_finite_latent(vae.encode(prepare_reference(image, "ip", ref_res, mask)))
        progress.update(1)
        return io.NodeOutput(with_aligngen_reference(conditioning, latent, start, end))
