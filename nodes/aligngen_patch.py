"""How AlignGen reaches FLUX inside ComfyUI, through public extension points only.

Per pass, a DIFFUSION_MODEL wrapper reads the conditioning's `refcustom_aligngen` payload and the
reference latents. A pass without the payload (the negative prompt) is plain FLUX. A pass with it gets,
for that pass only:

- the reference-only LoRA, as forward hooks on the target Linears (double blocks: `img_attn.qkv`,
  `img_attn.proj`; single blocks: the q|k|v rows of `linear1`, and `linear2`) that add the LoRA term to
  the trailing reference rows of each Linear's fresh output. The hooks are registered when the pass
  starts and removed when it ends, whatever happens in between. No module is copied, swapped or given
  an attribute: ComfyUI's weight patching (other LoRAs), casting, offloading and quantized weights see
  their own modules, and its per-module loader state stays its own (a Linear copy that shared that state
  once made ComfyUI skip the next graph's LoRA);
- an attention override for the selective cross-modal mask: non-concept text rows are recomputed
  without the reference keys (no L x L mask), chained to any earlier override.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import comfy.conds
import torch

from ..model.aligngen import add_reference_lora_
from ..model.dreamo_conditioning import tokens_for_latent
from .dreamo_patch import DIAGONAL_REFERENCE_METHOD
from .input_checks import latent_batch_of, require_reference_batch

ALIGNGEN_COND_KEY = "refcustom_aligngen"
ALIGNGEN_WRAPPER_KEY = "refcustom_aligngen"


@dataclass(frozen=True)
class AlignGenConditioning:
    """The conditioning payload: where S* and the concept name sit in T5's rows, and which reference
    latent is AlignGen's (it must be the last one: the LoRA acts on the trailing tokens)."""

    concept_start: int
    concept_end: int  # exclusive; concept_end == concept_start means no concept tokens (image-only branch)
    reference_slot: int
    reference_batch: int = 1  # images in the reference latent: 1 (shared by every latent) or one per latent

    def without_concept(self) -> AlignGenConditioning:
        return AlignGenConditioning(self.concept_start, self.concept_start, self.reference_slot, self.reference_batch)


class AlignGenCond(comfy.conds.CONDConstant):
    """The payload as a model cond that batches: conditionings whose AlignGen reference is the same slot
    run in one model call even when their concept rows differ (normalized guidance's positive and
    image-only branches); the model then gets one payload per batch row."""

    def __init__(self, cond: AlignGenConditioning, rows: int = 1):
        super().__init__(cond)
        self.rows = rows

    def _copy_with(self, cond):
        return AlignGenCond(cond, self.rows)

    def process_cond(self, batch_size, **kwargs):
        return AlignGenCond(self.cond, batch_size)

    def can_concat(self, other):
        return isinstance(other, AlignGenCond) and other.cond.reference_slot == self.cond.reference_slot

    def concat(self, others) -> tuple[AlignGenConditioning, ...]:
        return tuple(row for part in (self, *others) for row in [part.cond] * part.rows)


def payload_rows(payload) -> tuple[AlignGenConditioning, ...]:
    """The model's AlignGen payload as rows: one AlignGenConditioning (the same for every row), or one per row."""
    return (payload,) if isinstance(payload, AlignGenConditioning) else tuple(payload)


def concept_rows(payload, batch: int, text_tokens: int) -> torch.Tensor:
    """[B, T] bool, True on the rows of S* and the concept name, from one payload or one per row."""
    rows = [payload] * batch if isinstance(payload, AlignGenConditioning) else list(payload)
    if len(rows) != batch:
        raise ValueError(f"AlignGen got {len(rows)} payload rows for a batch of {batch}")
    mask = torch.zeros(batch, text_tokens, dtype=torch.bool)
    for b, row in enumerate(rows):
        mask[b, row.concept_start:row.concept_end] = True
    return mask


class ReferenceLoRAHooks:
    """The reference-only LoRA of one AlignGen file, added by forward hooks for one pass at a time.

    `loras` are (target under diffusion_model, down [rank, in], up [rows, rank]) with the strength folded
    into `up`. The matrices are cast once to the device and dtype of the activations they meet and kept for
    the sampling run (`release` drops the copies; the loader calls it when ComfyUI cleans up after sampling).
    """

    def __init__(self, loras: tuple[tuple[str, torch.Tensor, torch.Tensor], ...]):
        self.loras = loras
        self._cast: tuple[tuple, list] = ((), [])

    def __deepcopy__(self, memo):  # ModelPatcher.clone copies callbacks/wrappers: the matrices are read-only
        return self

    def release(self, *args) -> None:
        self._cast = ((), [])

    def _matrices(self, device: torch.device, dtype: torch.dtype) -> list:
        key = (device, dtype)
        if self._cast[0] != key:
            self._cast = (key, [(down.to(device, dtype), up.to(device, dtype)) for _, down, up in self.loras])
        return self._cast[1]

    @contextlib.contextmanager
    def attached(self, diffusion_model: torch.nn.Module, reference_tokens: int):
        """Hooks on the target Linears for the duration: each adds the LoRA term to its output's last
        `reference_tokens` rows, in the dtype and on the device of the Linear's input (the blocks' compute
        dtype, whatever the weights are stored in: fp8, GGUF, offloaded)."""
        handles = []
        try:
            for index, (target, _, _) in enumerate(self.loras):
                def hook(module, args, output, index=index):
                    down, up = self._matrices(args[0].device, args[0].dtype)[index]
                    return add_reference_lora_(output, args[0], down, up, reference_tokens)

                handles.append(diffusion_model.get_submodule(target).register_forward_hook(hook))
            yield
        finally:
            for handle in handles:
                handle.remove()


class SelectiveAttentionOverride:
    """Attention override for one pass: text rows that are not concept rows (`concept` [B, T] bool) do not
    see the reference keys. Everything else is the original attention (chained to a previous override)."""

    def __init__(self, concept: torch.Tensor, reference_span: tuple[int, int], previous=None):
        self.blocked = ~concept
        self.text_tokens = concept.shape[1]
        self.reference_span = reference_span
        self.previous = previous

    def _original(self, func, *args, **kwargs):
        return self.previous(func, *args, **kwargs) if self.previous is not None else func(*args, **kwargs)

    def __call__(self, func, q, k, v, heads, *args, mask=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
        out = self._original(func, q, k, v, heads, *args, mask=mask, skip_reshape=skip_reshape,
                             skip_output_reshape=skip_output_reshape, **kwargs)
        start, end = self.reference_span
        if not skip_reshape or skip_output_reshape or q.shape[2] != end:
            return out  # not a FLUX joint attention of this pass's sequence
        if mask is not None:
            raise ValueError("AlignGen's selective attention cannot combine with an attention mask on the same model "
                             "(e.g. Redux with strength_type 'attn_bias'); use strength_type 'multiply'.")
        text = self.text_tokens
        # The reference span ends the joint sequence (q.shape[2] == end above): the keys without it are a view.
        text_out = self._original(func, q[:, :, :text], k[:, :, :start], v[:, :, :start], heads, *args, mask=None,
                                  skip_reshape=True, skip_output_reshape=False, **kwargs)
        if self.blocked.device != out.device:  # moved once per pass, not once per block
            self.blocked = self.blocked.to(out.device)
        blocked = self.blocked
        text_rows = torch.where(blocked[:, :, None], text_out.to(out.dtype), out[:, :text])
        return torch.cat([text_rows, out[:, text:]], dim=1)


class AlignGenWrapper:
    """DIFFUSION_MODEL wrapper: per pass with an AlignGen payload, the reference-only LoRA and the mask."""

    def __init__(self, lora: ReferenceLoRAHooks):
        self.lora = lora

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                 transformer_options={}, **kwargs):
        payload = kwargs.get(ALIGNGEN_COND_KEY)  # one AlignGenConditioning, or one per batch row
        if payload is None:
            return executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)
        ref_latents = ref_latents or []
        rows = payload_rows(payload)
        slot = rows[0].reference_slot
        for reference_batch in sorted({row.reference_batch for row in rows}):
            require_reference_batch("AlignGen Conditioning", reference_batch, latent_batch_of(x, transformer_options),
                                    "use one AlignGen Conditioning per reference image, or give as many reference "
                                    "images as the latent batch.")
        if slot != len(ref_latents) - 1:
            raise ValueError(
                f"AlignGen's reference must be the last reference latent (its LoRA acts on the trailing tokens), but it "
                f"is slot {slot} of {len(ref_latents)}. Apply AlignGen after any other reference node."
            )
        method = kwargs.get("ref_latents_method")
        if method != DIAGONAL_REFERENCE_METHOD:
            raise ValueError(f"AlignGen's reference needs the diagonal layout ('{DIAGONAL_REFERENCE_METHOD}'), this "
                             f"conditioning uses '{method}'. Remove the reference-method node after AlignGen.")
        patch = executor.class_obj.patch_size
        reference = tokens_for_latent(ref_latents[-1].shape[-2], ref_latents[-1].shape[-1], patch)
        total = context.shape[1] + tokens_for_latent(x.shape[-2], x.shape[-1], patch) + sum(
            tokens_for_latent(r.shape[-2], r.shape[-1], patch) for r in ref_latents)
        override = SelectiveAttentionOverride(concept_rows(payload, x.shape[0], context.shape[1]),
                                              (total - reference, total),
                                              previous=transformer_options.get("optimized_attention_override"))
        options = {**transformer_options, "optimized_attention_override": override}
        with self.lora.attached(executor.class_obj, reference):
            return executor(x, timestep, context, y, guidance, ref_latents, control, options, **kwargs)
