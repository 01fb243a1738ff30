"""Reading DreamO's official weight files.

Formats (see shared/notes/dreamo-reference.md, section 1):

- `dreamo.safetensors` and the v1 cfg-distill / quality files use DreamO's original LoRA keys:
  `...double_blocks_<i>...{qkv_lora1,qkv_lora2,proj_lora1,proj_lora2}.{down,up}.weight` and
  `...single_blocks_<i>...{qkv_lora,proj_lora}.{down,up}.weight`, rank read from `down`, no alpha
  (scale 1). `dreamo.safetensors` also holds the three embedding tables.
- `embedding.safetensors` holds only the embedding tables.
- `comfyui/*_comfyui.safetensors`, `v1.1/*` and the turbo LoRA are in layouts ComfyUI's own LoRA
  loader reads (diffusers `transformer.` keys, kohya, BFL); they pass through untouched.

`convert_original_lora` rewrites the original keys into diffusers FLUX LoRA keys exactly as the
official `convert_flux_lora_to_diffusers` does (fused qkv `up` split row-wise into q, k, v; `down`
shared), so ComfyUI's key map then lands them on the fused BFL weights with slice offsets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .dreamo_conditioning import INDEX_ROWS, TASK_ROWS
from .weight_files import read_safetensors

TASK_KEY = "dreamo_task_embedding.weight"
INDEX_KEY = "dreamo_idx_embedding.weight"
T5_KEY = "dreamo_t5_embedding.weight"
EMBEDDING_KEYS = (TASK_KEY, INDEX_KEY, T5_KEY)

# The pipeline keeps the last 10 rows of the T5 table: [ref#1]..[ref#9], [res].
PLACEHOLDER_ROWS = 10

_ORIGINAL_LORA = re.compile(
    r"(?P<kind>double|single)_blocks[._](?P<block>\d+)\..*?(?P<tag>qkv_lora1|qkv_lora2|proj_lora1|proj_lora2|qkv_lora|proj_lora)"
    r"\.(?P<part>down|up)\.weight$"
)

_DOUBLE_TARGETS = {
    "qkv_lora1": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "qkv_lora2": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "proj_lora1": ("attn.to_out.0",),
    "proj_lora2": ("attn.to_add_out",),
}
_SINGLE_TARGETS = {
    "qkv_lora": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "proj_lora": ("proj_out",),
}

# Suffixes of the "up" half of every LoRA layout ComfyUI's loader accepts (comfy/weight_adapter/lora.py).
_LORA_UP_SUFFIXES = (
    ".lora_up.weight",
    "_lora.up.weight",
    ".lora_B.weight",
    ".lora.up.weight",
    ".lora_B",
    ".lora_linear_layer.up.weight",
    ".lora_B.default.weight",
)


@dataclass(frozen=True)
class DreamOEmbeddingTables:
    """The learned tables: task [2, D], index [10, D], T5 placeholders [10, T] (or None)."""

    task: torch.Tensor
    index: torch.Tensor
    placeholders: torch.Tensor | None

    def __post_init__(self):
        if self.task.ndim != 2 or self.task.shape[0] != TASK_ROWS:
            raise ValueError(f"{TASK_KEY} must be [{TASK_ROWS}, hidden], got {list(self.task.shape)}")
        if self.index.ndim != 2 or self.index.shape[0] < INDEX_ROWS:
            raise ValueError(f"{INDEX_KEY} must be [{INDEX_ROWS}, hidden], got {list(self.index.shape)}")
        if self.index.shape[1] != self.task.shape[1]:
            raise ValueError(
                f"{TASK_KEY} and {INDEX_KEY} disagree on width ({self.task.shape[1]} vs {self.index.shape[1]})"
            )
        if self.placeholders is not None and self.placeholders.shape[0] != PLACEHOLDER_ROWS:
            raise ValueError(f"placeholder table must have {PLACEHOLDER_ROWS} rows, got {self.placeholders.shape[0]}")

    @property
    def hidden_size(self) -> int:
        return self.task.shape[1]

    def condition_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict for `DreamOConditionEmbedding`."""
        return {"task_embedding.weight": self.task, "idx_embedding.weight": self.index[:INDEX_ROWS]}


@dataclass(frozen=True)
class DreamOFile:
    """What one file holds. `lora` is ready for ComfyUI's LoRA loader (None if the file has no LoRA)."""

    path: Path
    lora: dict[str, torch.Tensor] | None
    lora_layout: str | None  # "dreamo-original" | "comfy-readable" | None
    embeddings: DreamOEmbeddingTables | None


def lora_module_names(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the LoRA modules (one per up matrix) in any layout ComfyUI reads."""
    names = []
    for key in state_dict:
        for suffix in _LORA_UP_SUFFIXES:
            if key.endswith(suffix):
                names.append(key[: -len(suffix)])
                break
    return names


def is_original_dreamo_lora(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(_ORIGINAL_LORA.search(k) for k in state_dict)


def convert_original_lora(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DreamO original LoRA keys -> diffusers FLUX LoRA keys (`transformer....lora_A/lora_B.weight`)."""
    pairs: dict[tuple[str, int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = _ORIGINAL_LORA.search(key)
        if match is None:
            continue
        pairs.setdefault((match["kind"], int(match["block"]), match["tag"]), {})[match["part"]] = tensor

    converted: dict[str, torch.Tensor] = {}
    for (kind, block, tag), parts in sorted(pairs.items()):
        if set(parts) != {"down", "up"}:
            raise ValueError(f"DreamO LoRA {kind}_blocks_{block} {tag} lacks its {({'down', 'up'} - set(parts)).pop()} matrix")
        down, up = parts["down"], parts["up"]
        if kind == "double":
            prefix, targets = f"transformer.transformer_blocks.{block}", _DOUBLE_TARGETS[tag]
        else:
            prefix, targets = f"transformer.single_transformer_blocks.{block}", _SINGLE_TARGETS[tag]
        if len(targets) > 1 and up.shape[0] % len(targets) != 0:
            raise ValueError(f"fused qkv up matrix of {kind} block {block} has {up.shape[0]} rows, not a multiple of 3")
        ups = torch.chunk(up, len(targets), dim=0)
        for target, up_part in zip(targets, ups, strict=True):
            converted[f"{prefix}.{target}.lora_A.weight"] = down
            converted[f"{prefix}.{target}.lora_B.weight"] = up_part.contiguous()
    return converted


def _read_embeddings(tensors: dict[str, torch.Tensor], path: Path) -> DreamOEmbeddingTables | None:
    present = [k for k in EMBEDDING_KEYS if k in tensors]
    if not present:
        return None
    missing = [k for k in (TASK_KEY, INDEX_KEY) if k not in tensors]
    if missing:
        raise ValueError(f"{path.name} has DreamO embedding keys {present} but lacks {missing}; the file is incomplete.")
    placeholders = tensors.get(T5_KEY)
    if placeholders is not None:
        if placeholders.shape[0] < PLACEHOLDER_ROWS:
            raise ValueError(f"{T5_KEY} in {path.name} has {placeholders.shape[0]} rows, DreamO needs {PLACEHOLDER_ROWS}")
        placeholders = placeholders[-PLACEHOLDER_ROWS:]
    return DreamOEmbeddingTables(task=tensors[TASK_KEY], index=tensors[INDEX_KEY], placeholders=placeholders)


def read_dreamo_file(path: str | Path) -> DreamOFile:
    """Read any DreamO-family file; raise naming what was expected if it is none of them."""
    path = Path(path)
    tensors, _ = read_safetensors(path, "DreamO")

    embeddings = _read_embeddings(tensors, path)
    lora_tensors = {k: v for k, v in tensors.items() if k not in EMBEDDING_KEYS}
    if is_original_dreamo_lora(lora_tensors):
        lora, layout = convert_original_lora(lora_tensors), "dreamo-original"
    elif lora_module_names(lora_tensors):
        lora, layout = lora_tensors, "comfy-readable"
    else:
        lora, layout = None, None

    if lora is None and embeddings is None:
        sample = ", ".join(list(tensors)[:4]) or "no tensors"
        raise ValueError(
            f"{path.name} is not a DreamO file: expected DreamO LoRA keys (double_blocks_<i>...qkv_lora1.down.weight, "
            f"or diffusers/kohya LoRA keys ending in lora_A/lora_B/lora_down/lora_up) or the embedding tables "
            f"({', '.join(EMBEDDING_KEYS)}); found {sample}."
        )
    return DreamOFile(path=path, lora=lora, lora_layout=layout, embeddings=embeddings)
