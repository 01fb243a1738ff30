"""AlignGen's trainable model on diffusers' FluxTransformer2DModel (paper: shared/papers/aligngen.txt).

Trainable parts: the S* input embedding (one T5 row), the Deviation Extraction Module and a LoRA
that acts on the reference tokens only. Frozen: FLUX, T5, CLIP, Redux.

- The reference is VAE-encoded and appended after the noise tokens with DreamO's diagonal RoPE
  ids (the layout ComfyUI core calls "uxo"), without DreamO's condition/index embeddings.
- Reference-only LoRA (`refcustom.model.aligngen.ReferenceOnlyLoRA`): on the image-stream
  projections that DreamO's LoRA also targets (double blocks: fused image qkv and image attention
  output; single blocks: fused qkv and `proj_out`), applied to the trailing reference rows only;
  the text stream has no reference tokens, so it has no LoRA.
- Selective cross-modal attention in every block: text tokens that are not S* or the concept name
  do not attend to the reference tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.aligngen import (
    DeviationExtractionModule,
    install_reference_lora,
    load_reference_lora_state_dict,
    reference_lora_state_dict,
    reference_tokens,
)
from ..model.dreamo_conditioning import diagonal_position_ids
from .attention import SelectiveMask, TrainingAttnProcessor, fuse_attention


def reference_lora_targets(transformer: nn.Module) -> list[str]:
    names = []
    for i in range(len(transformer.transformer_blocks)):
        names += [f"transformer_blocks.{i}.attn.to_qkv", f"transformer_blocks.{i}.attn.to_out.0"]
    for i in range(len(transformer.single_transformer_blocks)):
        names += [f"single_transformer_blocks.{i}.attn.to_qkv", f"single_transformer_blocks.{i}.proj_out"]
    return names


class AlignGenFlux(nn.Module):
    def __init__(self, transformer: nn.Module, t5_width: int, redux_width: int, rank: int, alpha: float | None,
                 dem_heads: int, learned_init: torch.Tensor):
        super().__init__()
        fuse_attention(transformer)
        transformer.requires_grad_(False)  # after fusing: the fused Linears are new, trainable by default
        self.lora_scale = (alpha or rank) / rank
        self.lora_modules = install_reference_lora(transformer, reference_lora_targets(transformer), rank,
                                                   scale=self.lora_scale)
        for module in self.lora_modules.values():  # trained in float32 whatever the base dtype (as peft does)
            module.down.float()
            module.up.float()
        self.processors = []
        for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
            processor = TrainingAttnProcessor()
            block.attn.set_processor(processor)
            self.processors.append(processor)
        self.transformer = transformer
        self.learned_token = nn.Parameter(learned_init.reshape(1, t5_width).clone().float())
        self.dem = DeviationExtractionModule(t5_width, redux_width, dem_heads)
        self.to(transformer.device)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"lora.{k}": v for k, v in reference_lora_state_dict(self.lora_modules).items()}
        state |= {f"dem.{k}": v for k, v in self.dem.state_dict().items()}
        state["learned_token"] = self.learned_token
        return {k: v.detach().clone().contiguous() for k, v in state.items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]):
        load_reference_lora_state_dict(self.lora_modules, {k[5:]: v for k, v in state.items() if k.startswith("lora.")})
        self.dem.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("dem.")})
        with torch.no_grad():
            self.learned_token.copy_(state["learned_token"])

    def forward(self, noisy: torch.Tensor, reference: torch.Tensor, grids: list[tuple[int, int]],
                context: torch.Tensor, pooled: torch.Tensor, sigma: torch.Tensor, guidance: torch.Tensor,
                concept_mask: torch.Tensor) -> torch.Tensor:
        """Velocity on the noise tokens. noisy [B, N, 64], reference [B, n, 64], concept_mask [B, T] bool."""
        device = noisy.device
        noise_tokens, text_len = noisy.shape[1], context.shape[1]
        total = text_len + noise_tokens + reference.shape[1]
        selective = SelectiveMask(concept_mask.to(device), (text_len + noise_tokens, total))
        for processor in self.processors:
            processor.selective = selective
        try:
            with reference_tokens(self.lora_modules.values(), reference.shape[1]):
                out = self.transformer(
                    hidden_states=torch.cat([noisy, reference], dim=1), encoder_hidden_states=context,
                    pooled_projections=pooled, timestep=sigma,
                    img_ids=diagonal_position_ids(grids[0], grids[1:]).to(device),
                    txt_ids=torch.zeros(text_len, 3, device=device), guidance=guidance, return_dict=False,
                )[0]
        finally:
            for processor in self.processors:
                processor.selective = None
        return out[:, :noise_tokens]
