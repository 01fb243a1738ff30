"""SynCD's guidance-normalized combination of image and text guidance ("Generating Multi-Image Synthetic
Data for Text-to-Image Customization", section 4.3; formulas restored in shared/notes/syncd-aligngen.md).

Three predictions of the same noisy latent, in any space affine in the model output (epsilon, or
ComfyUI's denoised x0: x0 = x - sigma * eps with the same x and sigma for all three):

    e_0  : no references, neutral prompt
    e_I  : references, neutral prompt
    e_IT : references and the prompt

    g_I = e_I - e_0,  g_T = e_IT - e_I
    cap = min(|g_I|, |g_T|)                      per sample, L2 over all non-batch dims
    out = e_I + s_I * g_I * min(1, cap/|g_I|) + s_T * g_T * min(1, cap/|g_T|)

The larger direction is scaled down to the smaller one's norm; neither is scaled up. With
`normalize=False` it is the plain dual-guidance sum. Computed in float32 and cast back, with norms
taken on max-scaled vectors so huge values do not overflow and zero vectors do not divide by zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GuidanceScales:
    """text: s_T. image_start: s_I at the first step; image_increase: added linearly by the last
    (the paper: s_I(t) = s_I0 + s_adapt * (1000 - t) / 1000)."""

    text: float = 7.5
    image_start: float = 8.0
    image_increase: float = 5.0

    def image_at(self, progress: float) -> float:
        """s_I at `progress` in [0, 1] (0 = pure noise, 1 = clean)."""
        return self.image_start + self.image_increase * min(max(progress, 0.0), 1.0)


def per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm over all non-batch dims, shape [B, 1, ...] for broadcasting; overflow-safe in float32."""
    flat = x.reshape(x.shape[0], -1).float()
    scale = flat.abs().amax(dim=1, keepdim=True)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    norm = (flat / safe).norm(dim=1, keepdim=True) * scale
    return norm.reshape(x.shape[0], *([1] * (x.ndim - 1)))


def normalized_guidance(
    e_0: torch.Tensor,
    e_image: torch.Tensor,
    e_image_text: torch.Tensor,
    image_scale: float | torch.Tensor,
    text_scale: float | torch.Tensor,
    normalize: bool = True,
) -> torch.Tensor:
    """Combine the three predictions ([B, ...] each) as SynCD does; see the module docstring."""
    if not (e_0.shape == e_image.shape == e_image_text.shape):
        raise ValueError(
            f"the three guidance branches disagree in shape: {list(e_0.shape)}, {list(e_image.shape)}, "
            f"{list(e_image_text.shape)}"
        )
    dtype = e_image.dtype
    e_0, e_image, e_image_text = e_0.float(), e_image.float(), e_image_text.float()
    g_image = e_image - e_0
    g_text = e_image_text - e_image
    if normalize:
        n_image, n_text = per_sample_norm(g_image), per_sample_norm(g_text)
        cap = torch.minimum(n_image, n_text)
        tiny = torch.finfo(torch.float32).tiny
        # min(1, cap / n); where n == 0 the direction is zero and any finite factor leaves it zero.
        g_image = g_image * torch.clamp(cap / n_image.clamp_min(tiny), max=1.0)
        g_text = g_text * torch.clamp(cap / n_text.clamp_min(tiny), max=1.0)
    out = e_image + image_scale * g_image + text_scale * g_text
    if dtype in (torch.float16, torch.bfloat16):
        finfo = torch.finfo(dtype)
        out = out.clamp(finfo.min, finfo.max)
    return out.to(dtype)
