"""Reference image preprocessing per DreamO task (dreamo_generator.py `pre_condition`).

Images are ComfyUI-style [B, H, W, C] floats in [0, 1]; masks [B, H, W] (or [H, W]) with 1 on the
subject. What the official pipeline does per task, and what we do:

- ip / try-on: background removal (BEN2 there; here the MASK you bring, e.g. from a
  background-removal node) composites the subject onto white, then the area resize to `ref_res`.
- id: the official pipeline aligns a 512x512 face crop and whitens everything but the face via face
  parsing; `ref_res` does not apply. Here: bring a face crop (and a face-parsing MASK to whiten the
  rest); it is centre-cropped square and resized to 512.
- style: no background handling, area resize only.

Area resize (`resize_numpy_image_area`): scale k = sqrt(ref_res^2 / (h w)), each side floored to a
multiple of 16. kornia's antialiased resize stands in for cv2 INTER_AREA.
"""

from __future__ import annotations

import math

import kornia
import torch

TASKS = ("ip", "id", "try-on", "style")
ID_RESOLUTION = 512
GRID = 16  # VAE factor 8 x FLUX patch 2: reference sides must be multiples of 16


def area_resize_size(height: int, width: int, ref_res: int) -> tuple[int, int]:
    """Target (h, w) with about ref_res^2 pixels, each side floored to a multiple of 16."""
    if ref_res < GRID or ref_res % GRID:
        raise ValueError(f"ref_res must be a positive multiple of {GRID}, got {ref_res}")
    scale = math.sqrt(ref_res * ref_res / (height * width))
    target = (int(height * scale) // GRID * GRID, int(width * scale) // GRID * GRID)
    if min(target) < GRID:
        raise ValueError(
            f"a {width}x{height} reference is too narrow for ref_res {ref_res}: a side would shrink below "
            f"{GRID} px ({target[1]}x{target[0]}). Crop it closer to square or raise ref_res."
        )
    return target


def normalize_mask(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Check a mask against its image and return it as [B, H, W] matching the image batch."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise ValueError(f"MASK must be [B, H, W] or [H, W], got shape {list(mask.shape)}")
    if tuple(mask.shape[1:]) != tuple(image.shape[1:3]):
        raise ValueError(
            f"the MASK is {mask.shape[2]}x{mask.shape[1]} but its reference image is {image.shape[2]}x{image.shape[1]}; "
            "use the mask made from this image (or resize it to the image size)."
        )
    if mask.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"the MASK batch ({mask.shape[0]}) must be 1 or the image batch ({image.shape[0]})")
    mask = mask.expand(image.shape[0], -1, -1).to(image)
    empty = [i for i in range(mask.shape[0]) if float(mask[i].max()) <= 0.0]
    if empty:
        raise ValueError(
            f"the MASK is empty (all zero) for reference batch item(s) {empty}: nothing would be kept. "
            "Check the mask source, or disconnect the mask to use the whole image."
        )
    return mask


def whiten_background(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Composite the subject (mask 1) onto white, as DreamO's BEN2 and face-parsing steps do."""
    alpha = mask.unsqueeze(-1)
    return image * alpha + (1.0 - alpha)


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[1:3]) == tuple(size):
        return image
    chw = image.movedim(-1, 1)
    out = kornia.geometry.transform.resize(chw, size, interpolation="bilinear", antialias=True)
    return out.movedim(1, -1).clamp(0.0, 1.0)


def _center_square(image: torch.Tensor) -> torch.Tensor:
    h, w = image.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[:, top : top + side, left : left + side]


def prepare_reference(
    image: torch.Tensor, task: str, ref_res: int = 512, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the preprocessed reference [B, h, w, 3] in [0, 1], h and w multiples of 16."""
    if task not in TASKS:
        raise ValueError(f"unknown DreamO task {task!r}; choose one of {', '.join(TASKS)}")
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"reference IMAGE must be [B, H, W, C>=3], got {list(image.shape)}")
    if min(image.shape[1:3]) < GRID:
        raise ValueError(f"reference image is {image.shape[2]}x{image.shape[1]} px; it needs at least {GRID} px a side")
    image = image[..., :3].float()

    if mask is not None:
        if task == "style":
            raise ValueError(
                "style references take no MASK: DreamO keeps the whole style image. Disconnect the mask or pick "
                "task ip / try-on."
            )
        image = whiten_background(image, normalize_mask(mask, image))

    if task == "id":
        return _resize(_center_square(image), (ID_RESOLUTION, ID_RESOLUTION))
    return _resize(image, area_resize_size(image.shape[1], image.shape[2], ref_res))
