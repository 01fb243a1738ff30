"""VAE-encode a batch of reference images one image at a time, ticking ComfyUI's progress bar.

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
