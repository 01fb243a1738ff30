"""DreamO's trainable model on diffusers' FluxTransformer2DModel (what `dreamo/transformer.py` does).

Trainable parts: a peft LoRA on the official targets, the condition/index embedding tables
(`refcustom.model.dreamo_conditioning`, the same module the nodes use) and the ten placeholder T5
input embeddings. Frozen: everything else.

- LoRA targets (official release, shared/notes/dreamo-reference.md 1.3): per double block the fused
  image qkv, the fused text qkv and both attention output projections; per single block the fused
  qkv (the first 9216 rows of BFL `linear1`) and `proj_out` (`linear2`). q/k/v are fused before peft
  wraps them, so one `down` matrix serves q, k and v exactly as in the official files: the export
  is the official key layout with nothing approximated.
- The embeddings are added to the output of `x_embedder` by a forward hook, as the official forward
  adds them after the image input projection (noise rows + task[1], reference k rows + task[0] +
  idx[k]). Reference tokens follow the noise tokens with DreamO's diagonal RoPE ids.
- Chosen double blocks get a processor that hands their post-RoPE queries and keys to the losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.training_utils import cast_training_params
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from ..model.dreamo_conditioning import DreamOConditionEmbedding, TokenLayout, diagonal_position_ids
from ..model.dreamo_weights import PLACEHOLDER_ROWS
from .attention import TrainingAttnProcessor, fuse_attention

ADAPTER = "dreamo"
# peft matches a string target against the full module name.
DREAMO_LORA_TARGETS = r"(single_)?transformer_blocks\.\d+\.(attn\.(to_qkv|to_added_qkv|to_out\.0|to_add_out)|proj_out)"
PLACEHOLDER_TOKENS = [f"[ref#{k}]" for k in range(1, 10)] + ["[res]"]


@dataclass
class Captured:
    layer: int
    query: torch.Tensor  # [B, H, T + L, d] joint sequence, post-RoPE
    key: torch.Tensor
    text_len: int


class DreamOFlux(nn.Module):
    def __init__(self, transformer: nn.Module, t5_width: int, rank: int, alpha: float | None,
                 routing_layers: list[int], init_seed: int = 0):
        super().__init__()
        depth = len(transformer.transformer_blocks)
        bad = [j for j in routing_layers if not 0 <= j < depth]
        if bad:
            raise ValueError(f"dreamo.routing_layers {bad} do not exist: this FLUX has double blocks 0..{depth - 1}")
        fuse_attention(transformer)
        transformer.requires_grad_(False)  # after fusing: the fused Linears are new, trainable by default
        transformer.add_adapter(
            LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=DREAMO_LORA_TARGETS, lora_dropout=0.0,
                       init_lora_weights=True),
            adapter_name=ADAPTER,
        )
        # The adapter is created in the base's dtype; an optimizer needs float32 weights (peft casts inputs).
        cast_training_params(transformer, dtype=torch.float32)
        self.transformer = transformer
        hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        generator = torch.Generator().manual_seed(init_seed)
        self.condition = DreamOConditionEmbedding(hidden)
        with torch.no_grad():
            for table in (self.condition.task_embedding.weight, self.condition.idx_embedding.weight):
                table.copy_(torch.randn(table.shape, generator=generator) * 0.02)
        self.placeholders = nn.Parameter(torch.randn(PLACEHOLDER_ROWS, t5_width, generator=generator) * 0.02)
        self.routing_layers = list(routing_layers)
        self.captured: list[Captured] = []
        self.capturing = False
        for j in self.routing_layers:
            transformer.transformer_blocks[j].attn.set_processor(TrainingAttnProcessor(capture=self._capture_hook(j)))
        self._embedding: torch.Tensor | None = None
        transformer.x_embedder.register_forward_hook(self._add_embedding)
        self.to(transformer.device)

    def _capture_hook(self, layer: int):
        def capture(query, key, text_len):
            if self.capturing:  # not while gradient checkpointing recomputes the block
                self.captured.append(Captured(layer, query, key, text_len))
        return capture

    def _add_embedding(self, module, args, output):
        if self._embedding is None:
            return output
        return output + self._embedding.to(output.dtype).unsqueeze(0)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.transformer, adapter_name=ADAPTER).items()}
        state["condition.task"] = self.condition.task_embedding.weight
        state["condition.index"] = self.condition.idx_embedding.weight
        state["placeholders"] = self.placeholders
        return {k: v.detach().clone().contiguous() for k, v in state.items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]):
        lora = {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")}
        result = set_peft_model_state_dict(self.transformer, lora, adapter_name=ADAPTER)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"checkpoint LoRA keys do not fit this model: {result.unexpected_keys[:3]}")
        with torch.no_grad():
            self.condition.task_embedding.weight.copy_(state["condition.task"])
            self.condition.idx_embedding.weight.copy_(state["condition.index"])
            self.placeholders.copy_(state["placeholders"])

    def forward(self, noisy: torch.Tensor, references: list[torch.Tensor], indices: list[int],
                grids: list[tuple[int, int]], context: torch.Tensor, pooled: torch.Tensor, sigma: torch.Tensor,
                guidance: torch.Tensor, keep: list[torch.Tensor | None] | None = None,
                capture: bool = False) -> torch.Tensor:
        """Velocity on the noise tokens. noisy [B, N, 64]; references[k] [B, n_k, 64] with DreamO index
        indices[k]; grids: token grids of noise then references; keep[k]: token indices of reference k
        that stay (DreamO's stage-3 token drop), None for all."""
        ids = diagonal_position_ids(grids[0], grids[1:])
        noise_tokens = noisy.shape[1]
        tokens, id_rows, counts = [noisy], [ids[:noise_tokens]], []
        start = noise_tokens
        keep = keep or [None] * len(references)
        for ref, kept in zip(references, keep, strict=True):
            ref_ids = ids[start:start + ref.shape[1]]
            start += ref.shape[1]
            if kept is not None:
                ref, ref_ids = ref[:, kept], ref_ids[kept]
            tokens.append(ref)
            id_rows.append(ref_ids)
            counts.append(ref.shape[1])
        layout = TokenLayout(noise_tokens, tuple(counts), tuple(indices)) if references else None
        device = noisy.device
        self._embedding = self.condition.embedding_for_layout(layout, device=device) if layout else None
        self.captured = []
        self.capturing = capture
        try:
            out = self.transformer(
                hidden_states=torch.cat(tokens, dim=1), encoder_hidden_states=context, pooled_projections=pooled,
                timestep=sigma, img_ids=torch.cat(id_rows).to(device), txt_ids=torch.zeros(context.shape[1], 3, device=device),
                guidance=guidance, return_dict=False,
            )[0]
        finally:
            self._embedding = None
            self.capturing = False
        return out[:, :noise_tokens]


def split_captured(captured: Captured, noise_tokens: int, reference_counts: list[int]):
    """(queries of each reference [B, H, n_k, d], keys of the noise tokens [B, H, N, d])."""
    t = captured.text_len
    queries, start = [], t + noise_tokens
    for n in reference_counts:
        queries.append(captured.query[:, :, start:start + n])
        start += n
    return queries, captured.key[:, :, t:t + noise_tokens]


def placeholder_keys(captured: Captured, positions: torch.Tensor) -> torch.Tensor:
    """Keys of the placeholder text tokens: positions [B, n_refs] (T5 rows) -> [B, H, n_refs, d]."""
    batch = torch.arange(positions.shape[0], device=positions.device)[:, None]
    return captured.key.permute(0, 2, 1, 3)[batch, positions.to(captured.key.device)].permute(0, 2, 1, 3)
