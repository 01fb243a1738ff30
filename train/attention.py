"""The joint-attention processor the trainer installs on diffusers' FLUX blocks.

It computes what diffusers' `FluxAttnProcessor` computes (fused qkv projections, RMS-normed
queries and keys, RoPE, scaled dot-product attention, output projections) and adds two things
the losses and AlignGen need, both off unless asked for:

- `capture`: hand the post-RoPE queries and keys of the joint sequence to a callback (DreamO's
  routing and placeholder losses read them);
- `selective`: AlignGen's selective cross-modal attention (non-concept text rows do not see the
  reference tokens), through `refcustom.model.aligngen.selective_attention`.

The trainer fuses q/k/v before installing it (DreamO's LoRA targets the fused matrices), so only
the fused path is written here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb

from ..model.aligngen import selective_attention


@dataclass
class SelectiveMask:
    concept_mask: torch.Tensor  # [B, text_len] bool, True for S* and concept-name tokens
    reference_span: tuple[int, int]  # in the joint sequence [text, noise, references]


class TrainingAttnProcessor:
    def __init__(self, capture: Callable[[torch.Tensor, torch.Tensor, int], None] | None = None):
        self.capture = capture
        self.selective: SelectiveMask | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if not getattr(attn, "fused_projections", False):
            raise RuntimeError("TrainingAttnProcessor needs fused qkv projections (call fuse_projections first)")
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        text_len = 0
        if encoder_hidden_states is not None:
            eq, ek, ev = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
            eq = attn.norm_added_q(eq.unflatten(-1, (-1, attn.head_dim)))
            ek = attn.norm_added_k(ek.unflatten(-1, (-1, attn.head_dim)))
            ev = ev.unflatten(-1, (-1, attn.head_dim))
            text_len = encoder_hidden_states.shape[1]
            query, key, value = (torch.cat(pair, dim=1) for pair in ((eq, query), (ek, key), (ev, value)))
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        # [B, L, H, d] -> [B, H, L, d]
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))
        if self.capture is not None:
            self.capture(query, key, text_len)
        if self.selective is not None:
            # In single blocks the text is inside hidden_states; the processor is told its length.
            out = selective_attention(
                query, key, value, text_len=self.selective.concept_mask.shape[1],
                concept_mask=self.selective.concept_mask, reference_span=self.selective.reference_span,
            )
        else:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        text_out, image_out = out[:, :text_len], out[:, text_len:]
        return attn.to_out[1](attn.to_out[0](image_out.contiguous())), attn.to_add_out(text_out.contiguous())


def fuse_attention(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """Fuse q/k/v (and the text stream's) projections of every FLUX attention, drop the unfused copies."""
    from diffusers.models.transformers.transformer_flux import FluxAttention

    modules = [m for m in transformer.modules() if isinstance(m, FluxAttention)]
    for attn in modules:
        attn.fuse_projections()
        # The unfused matrices are dead weight once fused (a third of attention memory at FLUX size).
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            if hasattr(attn, name):
                delattr(attn, name)
    return modules
