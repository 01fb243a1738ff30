"""A synthetic reference task whose answer is known: coloured shapes on plain backgrounds.

Each target holds 1..max_references flat shapes (square, circle, triangle) in palette colours; each
shape's reference is the same shape and colour centred on white, and its mask is exactly its drawn
pixels. Since every pixel's right colour is known, `shape_metric` can score a generated image:
does the object at the masked place take its reference's colour? Tests, the quick start and the
training benchmark use it; the files are the ordinary `metadata.jsonl` format of train/dataset.py.

Every `two_column_every`-th sample is a two-column image (left and right halves with their own
backgrounds and shapes), with DreamO's multi-subject concatenation prompt "Generate a two-column image. The left
is {p1}. The right is {p2}" (arXiv 2504.16915, section 3.4.2; stage-1 warm-up data, section 3.5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..model.dreamo_conditioning import MAX_REFERENCES

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "magenta": (200, 50, 200),
    "cyan": (30, 190, 210),
}
KINDS = ("square", "circle", "triangle")
BACKGROUND_MIN = 200  # backgrounds have every channel >= 200; each palette colour has one <= 60
REFERENCE_FILL = 0.6  # a reference shape spans this fraction of the reference side


def rasterize(kind: str, box, size: int) -> np.ndarray:
    """Bool [size, size] mask of a shape in box (x0, y0, x1, y1), end exclusive, by pixel-centre tests.

    Circle: the disc inscribed in the box. Triangle: apex at the top middle, base along the bottom edge.
    Float boxes are allowed (a box scaled to another resolution).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    in_box = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if kind == "square":
        return in_box
    if kind == "circle":
        radius = min(x1 - x0, y1 - y0) / 2
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
    if kind == "triangle":
        half_width = (ys - y0) / (y1 - y0) * (x1 - x0) / 2
        return in_box & (np.abs(xs - cx) <= half_width)
    raise ValueError(f"unknown shape kind {kind!r}; expected one of {KINDS}")


def _place(rng: np.random.Generator, count: int, region: tuple[int, int, int, int], resolution: int) -> list:
    """`count` non-overlapping square boxes inside region: distinct cells of a grid, jittered within."""
    lo = max(3, resolution // 4)
    hi = max(lo, resolution // 3)
    rx0, ry0, rx1, ry1 = region
    cols, rows = (rx1 - rx0) // hi, (ry1 - ry0) // hi
    if cols * rows < count:
        raise ValueError(
            f"{count} shapes of up to {hi} px do not fit side by side in a {rx1 - rx0}x{ry1 - ry0} area; "
            "raise resolution or lower max_references."
        )
    boxes = []
    for cell in rng.choice(cols * rows, size=count, replace=False).tolist():
        c, r = cell % cols, cell // cols
        cx0, cx1 = rx0 + c * (rx1 - rx0) // cols, rx0 + (c + 1) * (rx1 - rx0) // cols
        cy0, cy1 = ry0 + r * (ry1 - ry0) // rows, ry0 + (r + 1) * (ry1 - ry0) // rows
        side = int(rng.integers(lo, hi + 1))
        x0 = cx0 + int(rng.integers(0, cx1 - cx0 - side + 1))
        y0 = cy0 + int(rng.integers(0, cy1 - cy0 - side + 1))
        boxes.append([x0, y0, x0 + side, y0 + side])
    return boxes


def _phrase(shapes: list[dict], first_index: int) -> str:
    names = [f"a {s['color']} {s['kind']} [ref#{first_index + k}]" for k, s in enumerate(shapes)]
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{joined} on a plain background"


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_shapes_dataset(
    folder: str | Path,
    count: int,
    seed: int,
    resolution: int = 64,
    reference_resolution: int = 32,
    max_references: int = 2,
    two_column_every: int = 0,
) -> Path:
    """Write `count` samples (PNGs + metadata.jsonl) into folder and return the folder.

    Sample i depends only on (seed, i). two_column_every=k > 0 makes samples k, 2k, ... (1-based)
    two-column images, each half with 1..max_references // 2 shapes. Extra key "synthetic": per
    reference {"kind", "color", "rgb", "box"} with box [x0, y0, x1, y1] in target pixels.
    """
    if not 1 <= max_references <= MAX_REFERENCES:
        raise ValueError(
            f"max_references must be 1..{MAX_REFERENCES} (DreamO's index embeddings), got {max_references}"
        )
    if two_column_every and max_references < 2:
        raise ValueError("two-column samples need a shape per half: use max_references >= 2 or two_column_every=0")
    if count < 1 or two_column_every < 0:
        raise ValueError(f"count must be >= 1 and two_column_every >= 0, got {count} and {two_column_every}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(PALETTE)
    lines = []
    for i in range(count):
        rng = np.random.default_rng((seed, i))
        two_column = two_column_every > 0 and (i + 1) % two_column_every == 0
        if two_column:
            half = resolution // 2
            regions = [(0, 0, half, resolution), (half, 0, resolution, resolution)]
            counts = [int(rng.integers(1, max_references // 2 + 1)) for _ in regions]
        else:
            regions = [(0, 0, resolution, resolution)]
            counts = [int(rng.integers(1, max_references + 1))]
        total = sum(counts)
        colors = rng.choice(len(names), size=total, replace=total > len(names)).tolist()
        kinds = rng.integers(0, len(KINDS), size=total).tolist()

        target = np.empty((resolution, resolution, 3), dtype=np.uint8)
        shapes, phrases = [], []
        for (x0, y0, x1, y1), n in zip(regions, counts, strict=True):
            target[y0:y1, x0:x1] = rng.integers(BACKGROUND_MIN, 256, size=3)
            column = []
            for box in _place(rng, n, (x0, y0, x1, y1), resolution):
                k = len(shapes)
                color = names[colors[k]]
                column.append({"kind": KINDS[kinds[k]], "color": color, "rgb": list(PALETTE[color]), "box": box})
                shapes.append(column[-1])
            phrases.append(_phrase(column, len(shapes) - n + 1))

        stem = f"{i:04d}"
        refs, masks = [], []
        side = max(1, round(REFERENCE_FILL * reference_resolution))
        offset = (reference_resolution - side) // 2
        ref_box = (offset, offset, offset + side, offset + side)
        for k, shape in enumerate(shapes, start=1):
            drawn = rasterize(shape["kind"], shape["box"], resolution)
            target[drawn] = shape["rgb"]
            _save(np.where(drawn, 255, 0).astype(np.uint8), folder / "masks" / f"{stem}_{k}.png")
            reference = np.full((reference_resolution, reference_resolution, 3), 255, dtype=np.uint8)
            reference[rasterize(shape["kind"], ref_box, reference_resolution)] = shape["rgb"]
            _save(reference, folder / "refs" / f"{stem}_{k}.png")
            refs.append(f"refs/{stem}_{k}.png")
            masks.append(f"masks/{stem}_{k}.png")
        _save(target, folder / "targets" / f"{stem}.png")

        if two_column:
            prompt = f"Generate a two-column image. The left is {phrases[0]}. The right is {phrases[1]}."
            subset = "two_column"
        else:
            prompt = phrases[0]
            subset = "single" if total == 1 else "multi"
        first = shapes[0]
        lines.append(
            {
                "image": f"targets/{stem}.png",
                "references": refs,
                "prompt": prompt,
                "masks": masks,
                "concepts": [f"{first['color']} {first['kind']}", first["kind"], "shape"],
                "subset": subset,
                "synthetic": shapes,
            }
        )
    with (folder / "metadata.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return folder


def shape_metric(generated: torch.Tensor, record_extra: dict, resolution: int) -> dict[str, float]:
    """Score a generated image [3, H, W] in [-1, 1] against the shapes it should show.

    record_extra: a SampleRecord.extra of a write_shapes_dataset sample (its "synthetic" list).
    resolution: the side the boxes were written at; a square image of another side is scored with the
    boxes scaled to it. Distances are L2 in RGB scaled to [0, 1] (at most sqrt(3)).
    color_error: mean distance to the reference colour over each shape's pixels (0 = exact colour).
    mask_contrast: mean distance outside the shape minus inside (higher = the colour is in its place).
    Both are averaged over the references.
    """
    shapes = record_extra.get("synthetic")
    if not shapes:
        raise ValueError('record_extra has no "synthetic" entry; score samples written by write_shapes_dataset.')
    if generated.ndim != 3 or generated.shape[0] != 3 or generated.shape[1] != generated.shape[2]:
        raise ValueError(f"generated must be a square [3, H, W] image, got shape {list(generated.shape)}")
    side = generated.shape[1]
    scale = side / resolution
    rgb = (generated.detach().float().cpu().clamp(-1, 1) + 1) / 2
    errors, contrasts = [], []
    for shape in shapes:
        mask = torch.from_numpy(rasterize(shape["kind"], [v * scale for v in shape["box"]], side))
        if not mask.any() or mask.all():
            raise ValueError(f"shape {shape} covers no pixel or every pixel at side {side}; check `resolution`.")
        target = torch.tensor(shape["rgb"], dtype=torch.float32).div(255).view(3, 1, 1)
        distance = (rgb - target).square().sum(0).sqrt()
        inside, outside = distance[mask].mean(), distance[~mask].mean()
        errors.append(float(inside))
        contrasts.append(float(outside - inside))
    return {"color_error": sum(errors) / len(errors), "mask_contrast": sum(contrasts) / len(contrasts)}
