"""VAE-encoding reference images: progress per image, and a clear error for a VAE that returns NaN.

A batch of references at FLUX resolution takes seconds per image on small GPUs (minutes on a CPU);
ComfyUI's `vae.encode` reports nothing, so the node would look hung. The VAE encodes each image on its
own anyway, so encoding them one by one gives the same latents.
"""

from __future__ import annotations

import comfy.utils
import torch


def encode_with_progress(vae, images: torch.Tensor) -> torch.Tensor:
    """`vae.encode(images)` ([B, H, W, C] -> latents), one progress tick per image."""
    progress = comfy.utils.ProgressBar(images.shape[0])
    latents = []
    for image in images.split(1):
        latents.append(vae.encode(image))
        progress.update(1)
    return torch.cat(latents)


def require_finite_latent(latent: torch.Tensor) -> torch.Tensor:
    """`latent`, or an error naming the fix when the VAE produced NaN/inf (an fp16 VAE overflowing, a wrong VAE)."""
    if not bool(latent.isfinite().all()):
        raise RuntimeError(
            "the VAE returned NaN/inf for this reference image. Use the FLUX VAE (ae.safetensors); if it runs in "
            "fp16, start ComfyUI with --fp32-vae or --bf16-vae."
        )
    return latent
