"""Reference image preprocessing per DreamO task (bytedance/DreamO `dreamo_generator.py` `pre_condition`).

Images are ComfyUI-style [B, H, W, C] floats in [0, 1]; masks [B, H, W] (or [H, W]) with 1 on the
subject. What the official pipeline does per task, and what we do:

- ip / try-on: background removal (BEN2 there; here the MASK you bring, e.g. from a
  background-removal node) composites the subject onto white at full resolution, then the area
  resize to `ref_res`.
- id: the official pipeline aligns a 512x512 face crop and whitens everything but the face via face
  parsing; `ref_res` does not apply. Here: bring a face crop (and a face-parsing MASK to whiten the
  rest); it is centre-cropped square and resized to 512.
- style: no background handling, area resize only.

Resizing is the official one, `dreamo/utils.py` `resize_numpy_image_area`: scale
k = sqrt(ref_res^2 / (h w)), each side floored to a multiple of 16, then OpenCV
`cv2.resize(..., interpolation=cv2.INTER_AREA)` on the uint8 HxWx3 image, for downscales and
upscales alike. The official pipeline holds uint8 images (PIL / numpy) throughout, so we round the
IMAGE to uint8 first (exact for LoadImage's uint8/255 images) and resize that: the result is the
official one bit for bit, and OpenCV's area resize is fast and needs no full-size float temporary.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

TASKS = ("ip", "id", "try-on", "style")
ID_RESOLUTION = 512
GRID = 16  # VAE factor 8 x FLUX patch 2: reference sides must be multiples of 16
ROW_BLOCK = 256  # rows converted to uint8 at a time: bounds the float temporaries to a strip of the image

# Size limits on reference inputs, checked from the shape alone before anything is allocated at full size.
# References end at about ref_res^2 pixels (0.26 MP at 512) or the generation's size, so pixels beyond a
# camera photo's only cost time and memory. 160 MP per image admits every camera photo: 24-61 MP full
# frame, 100 MP medium format (Fujifilm GFX100, Hasselblad X2D: 11648x8736 = 102 MP) and the largest
# sensor sold, Phase One IQ4 150 MP (14204x10652 = 151 MP); it refuses stitched panoramas and upscaler
# output, e.g. 20000x20000 = 400 MP. At the limit preprocessing adds about a uint8 copy (3 bytes/pixel,
# 460 MiB) and takes about a second (bench/reference_resize.py); the float IMAGE upstream already
# holds 12 bytes/pixel (1.8 GiB). A batch is bounded in total, 256 MP (ten 24 MP photos, one 150 MP
# and four 24 MP): its uint8 copy is made whole (768 MiB at most).
MAX_REFERENCE_PIXELS = 160_000_000
MAX_REFERENCE_BATCH_PIXELS = 256_000_000
DOWNSCALE_FIX = "Downscale it first with ImageScale / ImageScaleToTotalPixels (a few megapixels is plenty)"


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def check_reference_size(image: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Refuse a reference IMAGE [B, H, W, C] (and its MASK [B, H, W] or [H, W]) above
    MAX_REFERENCE_PIXELS per image or MAX_REFERENCE_BATCH_PIXELS per batch. Reads the shapes only,
    so it costs nothing even for a huge input; other shapes are left to the callers' shape checks."""
    if image.ndim == 4:
        _check_pixels(*image.shape[:3], "reference image")
    if mask is not None and mask.ndim in (2, 3):
        dims = mask.shape if mask.ndim == 3 else (1, *mask.shape)
        _check_pixels(*dims, "reference MASK")


def _check_pixels(batch: int, height: int, width: int, what: str) -> None:
    fix = DOWNSCALE_FIX if what == "reference image" else f"{DOWNSCALE_FIX}, and make the mask from the smaller image"
    if height * width > MAX_REFERENCE_PIXELS:
        raise ValueError(
            f"the {what} is {width}x{height} ({_megapixels(height * width)}), above the "
            f"{_megapixels(MAX_REFERENCE_PIXELS)} limit for reference images: references are downscaled to about "
            f"ref_res^2 pixels (or the generation's size) anyway, and such an input only costs time and memory. {fix}."
        )
    if batch * height * width > MAX_REFERENCE_BATCH_PIXELS:
        raise ValueError(
            f"the {what} batch is {batch} x {width}x{height} ({_megapixels(batch * height * width)} in all), above "
            f"the {_megapixels(MAX_REFERENCE_BATCH_PIXELS)} limit for one batch of references. {fix}, or use fewer "
            "images per batch."
        )


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
    """Check a mask against its image and return it as [B, H, W] matching the image batch (a view, no copy)."""
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
    mask = mask.expand(image.shape[0], -1, -1)
    empty = [i for i in range(mask.shape[0]) if float(mask[i].max()) <= 0.0]
    if empty:
        raise ValueError(
            f"the MASK is empty (all zero) for reference batch item(s) {empty}: nothing would be kept. "
            "Check the mask source, or disconnect the mask to use the whole image."
        )
    return mask


def to_uint8(image: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """[B, H, W, C>=3] float in [0, 1] -> uint8 [B, H, W, 3]: round(x * 255) clamped, as a float image
    saved to 8 bits. A mask [B, H, W] (1 = subject) first composites the subject onto white,
    x alpha + (1 - alpha), as DreamO's BEN2 and face-parsing steps do.

    Converted ROW_BLOCK rows at a time into one reused float buffer, in place, so the only full-size
    arrays are the caller's input and this uint8 result: a whole-image float expression would
    allocate several image-sized temporaries."""
    batch, height, width = image.shape[:3]
    out = np.empty((batch, height, width, 3), dtype=np.uint8)
    result = torch.from_numpy(out)
    buffer = torch.empty(min(height, ROW_BLOCK), width, 3)
    for b in range(batch):
        for top in range(0, height, ROW_BLOCK):
            rows = slice(top, top + ROW_BLOCK)
            block = image[b, rows, :, :3].to(device="cpu", dtype=torch.float32)
            work = buffer[: block.shape[0]]
            if mask is None:
                torch.mul(block, 255.0, out=work)
            else:  # the white composite on the 0..255 scale, in one pass: x a' + (255 - a'), a' = 255 alpha
                alpha = mask[b, rows].to(device="cpu", dtype=torch.float32).unsqueeze(-1) * 255.0
                torch.addcmul(255.0 - alpha, block, alpha, out=work)
            result[b, rows] = work.round_().clamp_(0.0, 255.0)
    return out


def resize_area(image: torch.Tensor, size: tuple[int, int], mask: torch.Tensor | None = None) -> torch.Tensor:
    """OpenCV INTER_AREA resize of [B, H, W, C>=3] float to [B, h, w, 3] float (size = (h, w)), on uint8.

    The result lies on the uint8 grid (k / 255) even when the size does not change. A mask [B, H, W]
    whitens the background first, at full resolution, as the official pipeline composites."""
    check_reference_size(image, mask)
    height, width = size
    pixels = to_uint8(image, mask)
    if (height, width) == tuple(pixels.shape[1:3]):
        resized = pixels
    else:
        # cv2 takes the size as (width, height)
        resized = np.stack([cv2.resize(item, (width, height), interpolation=cv2.INTER_AREA) for item in pixels])
    return torch.from_numpy(resized).float().div_(255.0)


def _center_square(image: torch.Tensor) -> tuple[slice, slice]:
    h, w = image.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return slice(top, top + side), slice(left, left + side)


def prepare_reference(
    image: torch.Tensor, task: str, ref_res: int = 512, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the preprocessed reference [B, h, w, 3] in [0, 1] (uint8 steps), h and w multiples of 16."""
    if task not in TASKS:
        raise ValueError(f"unknown DreamO task {task!r}; choose one of {', '.join(TASKS)}")
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"reference IMAGE must be [B, H, W, C>=3], got {list(image.shape)}")
    check_reference_size(image, mask)  # before anything reads or copies the pixels
    if min(image.shape[1:3]) < GRID:
        raise ValueError(f"reference image is {image.shape[2]}x{image.shape[1]} px; it needs at least {GRID} px a side")

    if mask is not None:
        if task == "style":
            raise ValueError(
                "style references take no MASK: DreamO keeps the whole style image. Disconnect the mask or pick "
                "task ip / try-on."
            )
        mask = normalize_mask(mask, image)

    if task == "id":
        # Whitening is per pixel, so cropping first (views, no copies) equals the official whiten-then-crop.
        rows, cols = _center_square(image)
        image = image[:, rows, cols]
        mask = None if mask is None else mask[:, rows, cols]
        return resize_area(image, (ID_RESOLUTION, ID_RESOLUTION), mask)
    return resize_area(image, area_resize_size(image.shape[1], image.shape[2], ref_res), mask)
