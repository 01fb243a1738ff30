"""Training data: a folder with `metadata.jsonl` that a user can write without our code.

One JSON object per line, paths relative to the folder (blank lines are skipped):

    {"image": "targets/0001.png", "references": ["refs/0001_1.png", "refs/0001_2.png"],
     "prompt": "a red circle [ref#1] next to a blue square [ref#2]",
     "masks": ["masks/0001_1.png", null], "concepts": ["red circle", "circle", "shape"], "subset": "stage1"}

- image, references (1..9), prompt: required. The prompt may hold DreamO placeholders `[ref#k]`/`[res]`.
- masks: per reference, the subject mask of that reference in the TARGET image (white = subject, target
  size) or null. DreamO's routing loss needs them (arXiv 2504.16915, section 3.3).
- concepts: the concept name, then broader parents (AlignGen's concept-name substitution).
- subset: a tag the progressive stages use to pick data. Other keys are kept in `SampleRecord.extra`.

`read_metadata` checks everything up front, so a bad line fails before training, naming the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..model.dreamo_conditioning import MAX_REFERENCES
from ..model.placeholders import RES_ROW, split_prompt

METADATA = "metadata.jsonl"
GRID = 16  # VAE factor 8 x FLUX patch 2: sides must be multiples of 16
KNOWN_KEYS = ("image", "references", "prompt", "masks", "concepts", "subset")


class DatasetError(ValueError):
    """A dataset folder that cannot be trained on; the message names the file, line and fix."""


@dataclass(frozen=True)
class SampleRecord:
    """One validated line of metadata.jsonl, with paths resolved against the dataset folder."""

    line: int  # 1-based line number in metadata.jsonl
    image: Path
    references: tuple[Path, ...]
    prompt: str
    masks: tuple[Path | None, ...] | None  # one entry per reference, or None when the line has no masks
    concepts: tuple[str, ...]
    subset: str | None
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def read_metadata(folder: str | Path) -> list[SampleRecord]:
    """Read and validate `folder/metadata.jsonl`; raise DatasetError for the first bad line."""
    folder = Path(folder)
    meta = folder / METADATA
    if not meta.is_file():
        raise DatasetError(
            f"{meta} not found; a dataset folder needs {METADATA} with one JSON object per line "
            '({"image": ..., "references": [...], "prompt": ...}, see train/dataset.py).'
        )
    records = []
    with meta.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if text.strip():
                records.append(_parse_line(folder, meta, number, text))
    if not records:
        raise DatasetError(f"{meta} has no samples; write one JSON object per line (see train/dataset.py).")
    return records


def _parse_line(folder: Path, meta: Path, number: int, text: str) -> SampleRecord:
    def fail(problem: str, fix: str) -> DatasetError:
        return DatasetError(f"{meta} line {number}: {problem}; {fix}")

    try:
        entry = json.loads(text)
    except json.JSONDecodeError as err:
        raise fail(f"not valid JSON ({err.msg} at column {err.colno})", "write one JSON object per line") from None
    if not isinstance(entry, dict):
        raise fail(f"expected a JSON object, got {type(entry).__name__}", "write one {...} object per line")

    def existing(value, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise fail(f'"{key}" must be a path string, got {value!r}', "give the file path relative to the folder")
        path = folder / value
        if not path.is_file():
            raise fail(
                f'"{key}" file {value!r} not found ({path})', f"fix the path (relative to {folder}) or add the file"
            )
        return path

    for key in ("image", "references", "prompt"):
        if key not in entry:
            raise fail(f'missing required key "{key}"', f"every line needs {', '.join(map(repr, KNOWN_KEYS[:3]))}")
    image = existing(entry["image"], "image")

    refs = entry["references"]
    if not isinstance(refs, list) or not refs:
        raise fail(f'"references" must be a non-empty list of paths, got {refs!r}', "list 1 to 9 reference images")
    if len(refs) > MAX_REFERENCES:
        raise fail(
            f"{len(refs)} references, but DreamO has {MAX_REFERENCES} index embeddings (placeholders "
            f"[ref#1]..[ref#{MAX_REFERENCES}])",
            f"use at most {MAX_REFERENCES} references per sample (split the sample)",
        )
    references = tuple(existing(r, f"references[{i}]") for i, r in enumerate(refs))

    prompt = entry["prompt"]
    if not isinstance(prompt, str):
        raise fail(f'"prompt" must be a string, got {prompt!r}', "write the caption as a JSON string")
    try:
        rows = [p for p in split_prompt(prompt) if isinstance(p, int) and p != RES_ROW]
    except ValueError as err:
        raise fail(f"bad placeholder in the prompt: {err}", "fix the placeholder") from None
    if rows and max(rows) + 1 > len(references):
        raise fail(
            f"the prompt names [ref#{max(rows) + 1}] but the line has {len(references)} reference(s)",
            "add the reference or renumber the placeholder",
        )

    masks = entry.get("masks")
    if masks is not None:
        if not isinstance(masks, list) or len(masks) != len(references):
            got = f"{len(masks)} entries" if isinstance(masks, list) else repr(masks)
            raise fail(
                f'"masks" must be a list with one entry per reference ({len(references)}), got {got}',
                "give one mask path or null per reference, in the same order",
            )
        target_size = None
        resolved = []
        for i, m in enumerate(masks):
            if m is None:
                resolved.append(None)
                continue
            path = existing(m, f"masks[{i}]")
            target_size = target_size or _image_size(image, fail)
            size = _image_size(path, fail)
            if size != target_size:
                raise fail(
                    f"mask {m!r} is {size[0]}x{size[1]} but the target image is {target_size[0]}x{target_size[1]}",
                    "masks mark the subject in the target image and must have its pixel size",
                )
            resolved.append(path)
        masks = tuple(resolved)

    concepts = entry.get("concepts") or []
    if not isinstance(concepts, list) or not all(isinstance(c, str) and c.strip() for c in concepts):
        raise fail(
            f'"concepts" must be a list of non-empty strings, got {concepts!r}', 'e.g. ["corgi", "dog", "animal"]'
        )
    subset = entry.get("subset")
    if subset is not None and not isinstance(subset, str):
        raise fail(f'"subset" must be a string or null, got {subset!r}', 'use a tag such as "stage1"')

    extra = {k: v for k, v in entry.items() if k not in KNOWN_KEYS}
    return SampleRecord(number, image, references, prompt, masks, tuple(concepts), subset, extra)


def _image_size(path: Path, fail) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as err:
        raise fail(f"cannot read image {path} ({err})", "replace it with a PNG/JPEG/WebP file") from None


def load_image(path: str | Path, size: int, mode: str = "RGB") -> torch.Tensor:
    """Read an image, resize its shorter side to `size` (bicubic, antialiased) and centre-crop it square.

    Returns float32 [C, size, size] in [0, 1] (C = 3 for "RGB", 1 for "L"). Images and masks go through
    this same function, so a mask stays aligned with its target. The crop starts at
    ((new_w - size) // 2, (new_h - size) // 2) of the resized image.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f'mode must be "RGB" or "L", got {mode!r}')
    with Image.open(path) as img:
        array = np.asarray(img.convert(mode), dtype=np.uint8)
    pixels = torch.from_numpy(array.copy()).float().div_(255.0)
    pixels = pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)
    height, width = pixels.shape[1:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        batch = F.interpolate(pixels[None], size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        pixels = batch[0]
        pixels.clamp_(0.0, 1.0)  # bicubic overshoots at edges
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return pixels[:, top : top + size, left : left + size].contiguous()


class ReferenceDataset(torch.utils.data.Dataset):
    """Decoded samples: target [3, R, R] and references [3, r, r] in [-1, 1], masks [n_ref, R, R] in {0, 1}."""

    def __init__(self, records: list[SampleRecord], resolution: int, reference_resolution: int):
        for name, value in (("resolution", resolution), ("reference_resolution", reference_resolution)):
            if value < GRID or value % GRID:
                raise ValueError(f"{name} must be a positive multiple of {GRID} (VAE 8 x patch 2), got {value}")
        self.records = list(records)
        self.resolution = resolution
        self.reference_resolution = reference_resolution

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        res = self.resolution
        masks = torch.zeros(len(rec.references), res, res)
        valid = torch.zeros(len(rec.references), dtype=torch.bool)
        for k, path in enumerate(rec.masks or ()):
            if path is not None:
                masks[k] = (load_image(path, res, "L")[0] > 0.5).float()
                valid[k] = True
        return {
            "image": load_image(rec.image, res) * 2 - 1,
            "references": [load_image(p, self.reference_resolution) * 2 - 1 for p in rec.references],
            "masks": masks,
            "mask_valid": valid,
            "prompt": rec.prompt,
            "concepts": rec.concepts,
            "index": i,
            "subset": rec.subset,
        }


def collate(samples: list[dict]) -> dict:
    """Stack ReferenceDataset items; "references" becomes a list over reference slots of [B, 3, r, r]."""
    counts = sorted({len(s["references"]) for s in samples})
    if len(counts) != 1:
        raise ValueError(
            f"a batch mixes samples with {counts} references; batches are grouped by reference count by "
            "batch_plan (use it as the DataLoader's batch_sampler)."
        )
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "references": [torch.stack([s["references"][k] for s in samples]) for k in range(counts[0])],
        "masks": torch.stack([s["masks"] for s in samples]),
        "mask_valid": torch.stack([s["mask_valid"] for s in samples]),
        "prompt": [s["prompt"] for s in samples],
        "concepts": [s["concepts"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        "subset": [s["subset"] for s in samples],
    }


def batch_plan(records: list[SampleRecord], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of record indices, each batch with a single reference count.

    Deterministic in (seed, epoch): shuffle indices, group by reference count, cut each group into
    batches (a group's last partial batch is kept), then shuffle the batch order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    groups: dict[int, list[int]] = {}
    for i in torch.randperm(len(records), generator=generator).tolist():
        groups.setdefault(len(records[i].references), []).append(i)
    batches = [
        group[start : start + batch_size]
        for _, group in sorted(groups.items())
        for start in range(0, len(group), batch_size)
    ]
    return [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]


def select_subsets(records: list[SampleRecord], subsets: list[str] | None) -> list[SampleRecord]:
    """Records whose subset tag is in `subsets` (all records for None or an empty list)."""
    if not subsets:
        return list(records)
    chosen = [r for r in records if r.subset in subsets]
    if not chosen:
        present = sorted({r.subset for r in records if r.subset is not None})
        raise DatasetError(
            f"no sample has subset {sorted(subsets)}; the dataset's subsets are {present or 'none (no line sets one)'}: "
            "fix the stage's subsets or tag the lines."
        )
    return chosen
