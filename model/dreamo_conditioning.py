"""DreamO condition and index embeddings, and the token layout they are added on.

DreamO (arXiv 2504.16915, section 3.2; `dreamo/transformer.py` in bytedance/DreamO) appends each
VAE-encoded reference to the image token sequence and, right after the image input projection,
adds a learned embedding to every image token:

    noise tokens          + task[1]
    tokens of reference k + task[0] + idx[k]     (k counted from 1, at most 9)

Text tokens get nothing. This module holds that arithmetic and the layout it needs; it knows
nothing of ComfyUI, so the training sidecar and the nodes share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# The index table has 10 rows and row 0 is never used, so DreamO can tell 9 references apart.
MAX_REFERENCES = 9
TASK_ROWS = 2
INDEX_ROWS = MAX_REFERENCES + 1
NOISE_TASK_ROW = 1
REFERENCE_TASK_ROW = 0


@dataclass(frozen=True)
class DreamOReference:
    """One reference attached to a conditioning.

    index: DreamO's reference index k (1..9); it picks row k of the index embedding and is the
        number written in the prompt placeholder `[ref#k]`.
    slot: position of the reference's latent in the conditioning's `reference_latents` list, which
        may also hold latents added by other nodes (core ReferenceLatent, Kontext).
    batch: how many images the reference latent holds: 1 (shared by every latent of the batch) or
        one per latent.
    """

    index: int
    slot: int
    batch: int = 1

    def __post_init__(self):
        if not 1 <= self.index <= MAX_REFERENCES:
            raise ValueError(
                f"DreamO reference index must be 1..{MAX_REFERENCES} (the index table's rows), got {self.index}."
            )
        if self.slot < 0:
            raise ValueError(f"reference slot must be >= 0, got {self.slot}")
        if self.batch < 1:
            raise ValueError(f"a reference holds at least one image, got a batch of {self.batch}")


@dataclass(frozen=True)
class DreamOReferenceSet:
    """Every DreamO reference of one conditioning, in the order they were added."""

    references: tuple[DreamOReference, ...] = ()

    def __post_init__(self):
        if len(self.references) > MAX_REFERENCES:
            raise ValueError(
                f"DreamO supports at most {MAX_REFERENCES} references per conditioning (its index table has "
                f"{INDEX_ROWS} rows, row 0 unused); got {len(self.references)}. Remove a reference node."
            )
        indices = [r.index for r in self.references]
        if len(set(indices)) != len(indices):
            raise ValueError(f"two references share a DreamO index: {indices}. Give each reference its own index.")
        slots = [r.slot for r in self.references]
        if len(set(slots)) != len(slots):
            raise ValueError(f"two DreamO references claim the same reference-latent slot: {slots}")

    def next_index(self) -> int:
        """The smallest free index, which is what chaining reference nodes gives."""
        used = {r.index for r in self.references}
        for k in range(1, MAX_REFERENCES + 1):
            if k not in used:
                return k
        raise ValueError(
            f"this conditioning already has {MAX_REFERENCES} DreamO references, the most DreamO can tell apart "
            f"(index rows 1..{MAX_REFERENCES}). Remove one before adding another."
        )

    def added(self, reference: DreamOReference) -> DreamOReferenceSet:
        return DreamOReferenceSet(self.references + (reference,))

    def index_of_slot(self, slot: int) -> int | None:
        for r in self.references:
            if r.slot == slot:
                return r.index
        return None


@dataclass(frozen=True)
class TokenLayout:
    """How the image token sequence of one forward pass is made up.

    noise_tokens: tokens of the latent being denoised (first in the sequence).
    reference_tokens: token count of each appended reference latent, in sequence order.
    reference_indices: DreamO index of each appended reference, or None for a latent that another
        mechanism appended (it gets no DreamO embedding).
    """

    noise_tokens: int
    reference_tokens: tuple[int, ...] = ()
    reference_indices: tuple[int | None, ...] = ()

    def __post_init__(self):
        if len(self.reference_tokens) != len(self.reference_indices):
            raise ValueError("reference_tokens and reference_indices must have the same length")
        if self.noise_tokens <= 0 or any(n <= 0 for n in self.reference_tokens):
            raise ValueError(f"token counts must be positive: {self}")

    @property
    def total_tokens(self) -> int:
        return self.noise_tokens + sum(self.reference_tokens)

    @property
    def has_dreamo_references(self) -> bool:
        return any(k is not None for k in self.reference_indices)


def tokens_for_latent(height: int, width: int, patch_size: int = 2) -> int:
    """Image tokens of a latent of this size, with FLUX's pad-to-patch rounding."""
    return ((height + patch_size - 1) // patch_size) * ((width + patch_size - 1) // patch_size)


def diagonal_position_ids(noise_grid: tuple[int, int], reference_grids: list[tuple[int, int]]) -> torch.Tensor:
    """FLUX RoPE ids (index, row, col) of noise then references in DreamO's diagonal layout.

    Noise token (r, c) is (0, r, c). Reference k with token grid (h_k, w_k) starts where the previous
    block ended on both axes: (0, R_k + r, C_k + c), R_1 = H, C_1 = W, R_{k+1} = R_k + h_k. Returns
    float32 [L, 3]. This is the independent statement of the layout that tests compare ComfyUI's
    "uxo" reference method against.
    """
    blocks = []
    row0, col0 = 0, 0
    for h, w in [noise_grid, *reference_grids]:
        rows = torch.arange(h, dtype=torch.float32) + row0
        cols = torch.arange(w, dtype=torch.float32) + col0
        ids = torch.zeros(h, w, 3, dtype=torch.float32)
        ids[..., 1] = rows[:, None]
        ids[..., 2] = cols[None, :]
        blocks.append(ids.reshape(h * w, 3))
        row0 += h
        col0 += w
    return torch.cat(blocks, dim=0)


class DreamOConditionEmbedding(nn.Module):
    """The condition (task) and index embedding tables, and their addition to image tokens.

    Weight names follow the official file (`dreamo_task_embedding.weight`, `dreamo_idx_embedding.weight`
    without the prefix), so `load_state_dict` takes what `read_dreamo_file` returns.
    """

    def __init__(self, hidden_size: int, device=None, dtype=None):
        super().__init__()
        self.task_embedding = nn.Embedding(TASK_ROWS, hidden_size, device=device, dtype=dtype)
        self.idx_embedding = nn.Embedding(INDEX_ROWS, hidden_size, device=device, dtype=dtype)

    @property
    def hidden_size(self) -> int:
        return self.task_embedding.weight.shape[1]

    def embedding_for_layout(self, layout: TokenLayout, device=None, dtype=None) -> torch.Tensor:
        """E with shape [L, D]: one row per image token of `layout`, built on `device` in `dtype`.

        The tables are cast first (a few rows), so the [L, D] result is made where it is used.
        """
        task = self.task_embedding.weight.to(device=device, dtype=dtype)
        idx = self.idx_embedding.weight.to(device=device, dtype=dtype)
        rows = [task[NOISE_TASK_ROW].expand(layout.noise_tokens, -1)]
        for count, index in zip(layout.reference_tokens, layout.reference_indices, strict=True):
            if index is None:
                rows.append(task.new_zeros(count, task.shape[1]))
            else:
                rows.append((task[REFERENCE_TASK_ROW] + idx[index]).expand(count, -1))
        return torch.cat(rows, dim=0)

    def forward(self, img: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """img: [B, L, D] image tokens after the input projection; returns img + E."""
        if img.shape[1] != layout.total_tokens:
            raise ValueError(
                f"DreamO expected {layout.total_tokens} image tokens ({layout.noise_tokens} noise + references "
                f"{list(layout.reference_tokens)}), the model produced {img.shape[1]}. Another patch changed the "
                "image sequence before DreamO's embeddings; apply DreamO first."
            )
        if img.shape[2] != self.hidden_size:
            raise ValueError(
                f"DreamO embeddings are {self.hidden_size} wide but the model's hidden size is {img.shape[2]}: "
                "these DreamO weights do not belong to this FLUX model."
            )
        return img + self.embedding_for_layout(layout, device=img.device, dtype=img.dtype).unsqueeze(0)
