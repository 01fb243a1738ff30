"""DreamO's training losses (paper section 3.3, Eq. 2-5), on attention queries and keys.

Shapes: queries/keys are post-norm, post-RoPE, per head: [B, H, n, d], exactly what the joint
attention of a double block multiplies.

- Flow matching: x_t = (1 - sigma) x_0 + sigma * noise, the model predicts v = noise - x_0.
- Routing (Eq. 2-3): M_i = mean over the tokens of reference i of Q_i K_img^T / sqrt(d), one value
  per noisy-image token (averaged over heads too, so it is one response map per reference), pulled
  towards the reference's subject mask on the image token grid by a squared error (mean over image
  tokens, so its scale does not depend on the resolution), averaged over references that have a mask
  and over the chosen layers. Averaging the logits over the reference tokens equals taking the
  mean query first (linearity), which is how it is computed: no [n, N] matrix is ever formed.
- Placeholder (Eq. 4): each token of reference i gives softmax over the placeholder keys R =
  [K_[ref#1] .. K_[ref#n]] (scaled by 1/sqrt(d) as the attention is, so it does not saturate at
  FLUX's query norms); squared error to the one-hot of its own placeholder, summed over the
  placeholders, averaged over tokens, heads, references, layers and the samples whose prompt
  carries placeholders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def flow_matching_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - latents


def noisy_latents(latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sigma = sigma.reshape(-1, *([1] * (latents.ndim - 1)))
    return (1.0 - sigma) * latents + sigma * noise


def flow_matching_loss(prediction: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), flow_matching_target(latents, noise).float())


def mask_to_tokens(masks: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """[B, n, H, W] pixel masks -> [B, n, (H/patch)(W/patch)] area fractions on FLUX's token grid."""
    b, n, h, w = masks.shape
    pooled = F.avg_pool2d(masks.float().reshape(b * n, 1, h, w), kernel_size=patch)
    return pooled.reshape(b, n, -1)


def routing_response(query_ref: torch.Tensor, key_image: torch.Tensor) -> torch.Tensor:
    """[B, H, n, d] x [B, H, N, d] -> [B, N]: mean over heads and reference tokens of q.k / sqrt(d)."""
    d = query_ref.shape[-1]
    mean_query = query_ref.float().mean(dim=2, keepdim=True)  # [B, H, 1, d]
    logits = (mean_query @ key_image.float().transpose(-1, -2)).squeeze(2) / math.sqrt(d)  # [B, H, N]
    return logits.mean(dim=1)


def routing_loss(
    layers: list[tuple[list[torch.Tensor], torch.Tensor]], target: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """L_route. layers: per layer (queries of each reference [B, H, n_i, d], image keys [B, H, N, d]);
    target [B, n_refs, N] token-grid masks; valid [B, n_refs] bool (which references have a mask)."""
    if not bool(valid.any()):
        return target.new_zeros(())
    total, count = target.new_zeros(()), 0
    weights = valid.float()
    for ref_queries, key_image in layers:
        for i, query in enumerate(ref_queries):
            error = (routing_response(query, key_image) - target[:, i].float()).pow(2).mean(dim=1)  # [B]
            total = total + (error * weights[:, i]).sum()
        count += 1
    return total / (weights.sum() * count)


def placeholder_loss(
    layers: list[tuple[list[torch.Tensor], torch.Tensor]], valid: torch.Tensor
) -> torch.Tensor:
    """L_holder. layers: per layer (queries of each reference [B, H, n_i, d], placeholder keys
    [B, H, n_refs, d] in reference order); valid [B] bool (prompt has the placeholders)."""
    weights = valid.float()
    if not bool(valid.any()):
        return weights.new_zeros(())
    total, count = weights.new_zeros(()), 0
    for ref_queries, placeholder_keys in layers:
        n_refs = placeholder_keys.shape[2]
        d = placeholder_keys.shape[-1]
        for i, query in enumerate(ref_queries):
            probs = torch.softmax(query.float() @ placeholder_keys.float().transpose(-1, -2) / math.sqrt(d), dim=-1)
            one_hot = F.one_hot(torch.tensor(i), n_refs).to(probs)
            error = (probs - one_hot).pow(2).sum(dim=-1).mean(dim=(1, 2))  # [B]
            total = total + (error * weights).sum()
        count += len(ref_queries)
    return total / (weights.sum() * count)


def sample_sigmas(batch: int, generator: torch.Generator, sampling: str, mean: float, std: float) -> torch.Tensor:
    """Noise levels in (0, 1): logit-normal (SD3 / FLUX practice) or uniform."""
    if sampling == "uniform":
        return torch.rand(batch, generator=generator).clamp(1e-4, 1 - 1e-4)
    return torch.sigmoid(torch.randn(batch, generator=generator) * std + mean)
