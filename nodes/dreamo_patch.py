"""How DreamO's embeddings reach FLUX inside ComfyUI, through public extension points only.

A DIFFUSION_MODEL wrapper (registered with `ModelPatcher.add_wrapper_with_key`) sees, per forward
pass, the latent, the conditioning's `ref_latents` and our `refcustom_dreamo` model cond. From them
it builds the pass's `TokenLayout` and hands a post-input patch (`DreamOEmbeddingPatch`) to that
pass only, by adding it to a copy of `transformer_options["patches"]["post_input"]`. Core FLUX
runs that patch right after `img_in`, where DreamO adds its condition and index embeddings.

A pass whose conditioning has no DreamO references (a plain negative prompt, another model's
cond) gets no patch at all, which is exactly DreamO's true-negative branch. Nothing in core is
replaced, and no state outlives a call.
"""

from __future__ import annotations

import torch

from ..model.dreamo_conditioning import DreamOConditionEmbedding, DreamOReferenceSet, TokenLayout, tokens_for_latent
from .input_checks import latent_batch_of, require_reference_batch

DREAMO_COND_KEY = "refcustom_dreamo"
# Set by DreamO Text Encode: the reference indices k the prompt names with [ref#k].
PLACEHOLDER_COND_KEY = "refcustom_dreamo_placeholders"
DREAMO_WRAPPER_KEY = "refcustom_dreamo"
DIAGONAL_REFERENCE_METHOD = "uxo"  # core FLUX's name for the diagonal layout DreamO was trained with


class DreamOEmbeddingPatch:
    """Post-input patch: image tokens + DreamO's condition/index embedding for one forward pass."""

    def __init__(self, embedding: DreamOConditionEmbedding, layout: TokenLayout):
        self.embedding = embedding
        self.layout = layout

    def __call__(self, kwargs: dict) -> dict:
        return {**kwargs, "img": self.embedding(kwargs["img"], self.layout)}


def layout_for_pass(
    latent: torch.Tensor, ref_latents: list[torch.Tensor] | None, references: DreamOReferenceSet, patch_size: int,
    other_slots: frozenset[int] = frozenset(),
) -> TokenLayout:
    """other_slots: reference-latent slots another method of this pack owns (AlignGen's)."""
    ref_latents = ref_latents or []
    missing = [r.slot for r in references.references if r.slot >= len(ref_latents)]
    if missing:
        raise ValueError(
            f"the conditioning lists DreamO references in reference-latent slots {missing}, but only "
            f"{len(ref_latents)} reference latents reached the model. A node between the DreamO reference node "
            "and the sampler removed them; connect the DreamO reference output straight to the sampler."
        )
    owned = {r.slot for r in references.references} | set(other_slots)
    strangers = [slot for slot in range(len(ref_latents)) if slot not in owned]
    if strangers:
        # A core ReferenceLatent (Kontext) after the DreamO reference: its latent would silently take
        # DreamO's diagonal layout with no DreamO index, which neither model was trained on.
        raise ValueError(
            f"this conditioning carries {len(strangers)} reference latent(s) that no DreamO Reference node added "
            f"(slots {strangers}; a core ReferenceLatent / FLUX Kontext reference?). DreamO lays every reference "
            "latent of a conditioning out diagonally, so it would silently change that reference's layout. Give the "
            "image to a DreamO Reference node instead, or keep the Kontext reference on a conditioning without "
            "DreamO references."
        )
    return TokenLayout(
        noise_tokens=tokens_for_latent(latent.shape[-2], latent.shape[-1], patch_size),
        reference_tokens=tuple(tokens_for_latent(r.shape[-2], r.shape[-1], patch_size) for r in ref_latents),
        reference_indices=tuple(references.index_of_slot(slot) for slot in range(len(ref_latents))),
    )


def require_named_references(named, references: DreamOReferenceSet | None, transformer_options: dict) -> None:
    """A pass whose prompt names [ref#k] must carry DreamO reference k.

    Without it the official model would get a placeholder vector pointing at nothing. A pass with no
    DreamO references at all is checked only when it is core's positive branch (cond_or_uncond 0):
    a negative prompt never has references (DreamO's true negative), and a prompt left without any
    reference node is the mistake to catch on the positive.
    """
    if not named:
        return
    if references is None and 0 not in transformer_options.get("cond_or_uncond", [0]):
        return
    present = {r.index for r in references.references} if references is not None else set()
    missing = sorted(set(named) - present)
    if missing:
        names = ", ".join(f"[ref#{k}]" for k in missing)
        have = ", ".join(str(k) for k in sorted(present)) or "none"
        raise ValueError(
            f"the prompt names {names} but its conditioning has no DreamO reference with that index (indices "
            f"present: {have}). Add a DreamO Reference node with that index to this prompt's chain, or remove "
            "the placeholder."
        )


def aligngen_slots(model_kwargs: dict) -> frozenset[int]:
    """The reference-latent slot AlignGen Conditioning added to this pass, if any (it may share a conditioning)."""
    from .aligngen_patch import ALIGNGEN_COND_KEY, payload_rows  # here: aligngen_patch imports this module

    payload = model_kwargs.get(ALIGNGEN_COND_KEY)
    return frozenset() if payload is None else frozenset(row.reference_slot for row in payload_rows(payload))


class DreamOEmbeddingWrapper:
    """DIFFUSION_MODEL wrapper that installs `DreamOEmbeddingPatch` for passes with DreamO references."""

    def __init__(self, embedding: DreamOConditionEmbedding):
        self.embedding = embedding

    def __deepcopy__(self, memo):
        # ModelPatcher.clone copies wrapper dicts; the tables are read-only, so clones share them.
        return self

    def __call__(self, executor, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                 transformer_options={}, **kwargs):
        references = kwargs.get(DREAMO_COND_KEY)
        require_named_references(kwargs.get(PLACEHOLDER_COND_KEY), references, transformer_options)
        if references is None:
            return executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)
        method = kwargs.get("ref_latents_method")
        if method != DIAGONAL_REFERENCE_METHOD:
            raise ValueError(
                f"DreamO references need the diagonal reference layout ('{DIAGONAL_REFERENCE_METHOD}'), but this "
                f"conditioning uses '{method}'. Remove the FluxKontextMultiReferenceLatentMethod (or similar) node "
                "placed after the DreamO reference node."
            )
        latent_batch = latent_batch_of(x, transformer_options)
        for reference in references.references:
            require_reference_batch(
                f"DreamO Reference (index {reference.index})", reference.batch, latent_batch,
                "use one DreamO Reference node per reference image, or give as many reference images as the latent "
                "batch.")
        layout = layout_for_pass(x, ref_latents, references, executor.class_obj.patch_size,
                                 other_slots=aligngen_slots(kwargs))
        patches = dict(transformer_options.get("patches", {}))
        # First in line: DreamO adds its embeddings to img_in's output before any other post-input patch.
        patches["post_input"] = [DreamOEmbeddingPatch(self.embedding, layout), *patches.get("post_input", [])]
        options = {**transformer_options, "patches": patches}
        return executor(x, timestep, context, y, guidance, ref_latents, control, options, **kwargs)
