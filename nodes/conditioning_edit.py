"""Edits of ComfyUI CONDITIONING lists shared by the guiders: drop references, swap the prompt.

A CONDITIONING is a list of [text tokens [B, L, D], dict]. References live in the dict: core's
`reference_latents` / `reference_latents_method` (ReferenceLatent, Kontext, DreamO) and DreamO's
`refcustom_dreamo` / AlignGen's `refcustom_aligngen` model conds. Redux (StyleModelApply) appends its
image tokens after the text tokens.
Inputs are never mutated.
"""

from __future__ import annotations

import torch

from .aligngen_patch import ALIGNGEN_COND_KEY, AlignGenCond
from .dreamo_patch import DIAGONAL_REFERENCE_METHOD, DREAMO_COND_KEY, PLACEHOLDER_COND_KEY

# The [ref#k] indices a DreamO prompt names go with its references: a branch without references (or
# with another prompt's text) no longer names any.
REFERENCE_MODEL_CONDS = (DREAMO_COND_KEY, ALIGNGEN_COND_KEY, PLACEHOLDER_COND_KEY)

REFERENCE_KEYS = ("reference_latents", "reference_latents_method")


def with_diagonal_reference(cond: dict, latent, method_user: str) -> tuple[dict, int]:
    """(copy of one cond dict with `latent` appended to core's reference latents in the diagonal layout, its slot).

    Every reference latent of a conditioning shares one layout, so latents already there in another one
    are an error naming `method_user`, the method that needs the diagonal layout. Latents with no method
    come from core's ReferenceLatent, which FLUX lays out as Kontext does ('offset'): switching them to
    the diagonal layout would silently change what a Kontext model sees, so they are an error too.
    """
    latents = list(cond.get("reference_latents", []))
    method = cond.get("reference_latents_method")
    if latents and method is None:
        raise ValueError(
            f"this conditioning already carries {len(latents)} reference latent(s) from a core ReferenceLatent node "
            f"(FLUX Kontext's layout). {method_user} lays every reference of a conditioning out diagonally, which "
            f"would silently move them. Give that image to {method_user} instead of ReferenceLatent, or keep the "
            f"Kontext reference on a conditioning without {method_user} references."
        )
    if latents and method != DIAGONAL_REFERENCE_METHOD:
        raise ValueError(
            f"this conditioning already carries reference latents in the '{method}' layout (Kontext); {method_user} "
            f"needs the diagonal '{DIAGONAL_REFERENCE_METHOD}' layout for all of them. Use separate conditionings."
        )
    return {**cond, "reference_latents": latents + [latent], "reference_latents_method": DIAGONAL_REFERENCE_METHOD}, \
        len(latents)


def without_references(conditioning: list) -> list:
    """A copy of `conditioning` with every reference latent and the DreamO/AlignGen model conds removed."""
    out = []
    for embedding, cond in conditioning:
        cond = {k: v for k, v in cond.items() if k not in REFERENCE_KEYS}
        if any(key in cond.get("model_conds", {}) for key in REFERENCE_MODEL_CONDS):
            cond["model_conds"] = {k: v for k, v in cond["model_conds"].items() if k not in REFERENCE_MODEL_CONDS}
        out.append([embedding, cond])
    return out


def with_prompt_replaced(conditioning: list, neutral: list, prompt: list | None = None) -> list:
    """`conditioning` with its text swapped for `neutral`'s, keeping references and appended Redux tokens.

    prompt: the text encoding `conditioning` was built from. Needed only when image tokens were appended
    after the text (Redux): the tokens past the prompt's length are kept. Without it the whole token
    tensor is treated as text.
    """
    neutral_tokens, neutral_extra = neutral[0][0], neutral[0][1]
    out = []
    for tokens, cond in conditioning:
        text_length = tokens.shape[1]
        if prompt is not None:
            prompt_tokens = prompt[0][0]
            text_length = prompt_tokens.shape[1]
            if tokens.shape[1] < text_length or not torch.equal(
                tokens[:1, :text_length].to(prompt_tokens), prompt_tokens[:1]
            ):
                raise ValueError(
                    "the `prompt` input is not the text this conditioning was built from (its tokens are not the "
                    "conditioning's first tokens). Wire the text encode node at the start of the chain."
                )
        appended = tokens[:, text_length:]
        text = neutral_tokens.to(tokens).expand(tokens.shape[0], -1, -1)
        if "attention_mask" in cond and text.shape[1] != text_length:
            raise ValueError(
                f"this conditioning carries an attention mask sized for {text_length} text tokens (Redux strength "
                f"by attention bias) but the neutral prompt encodes to {text.shape[1]}; use a shorter prompt or "
                "Redux strength_type 'multiply'."
            )
        new = dict(cond)
        if PLACEHOLDER_COND_KEY in cond.get("model_conds", {}):  # the neutral text names no reference
            new["model_conds"] = {k: v for k, v in cond["model_conds"].items() if k != PLACEHOLDER_COND_KEY}
        aligngen = new.get("model_conds", {}).get(ALIGNGEN_COND_KEY)
        if aligngen is not None:
            # The concept's T5 rows belong to the replaced prompt: the neutral text has no concept tokens.
            new["model_conds"] = {**new["model_conds"],
                                  ALIGNGEN_COND_KEY: AlignGenCond(aligngen.cond.without_concept())}
        if "pooled_output" in neutral_extra:
            new["pooled_output"] = neutral_extra["pooled_output"]
        out.append([torch.cat([text, appended], dim=1), new])
    return out
