"""On-disk caches of what does not change during training: VAE latents and fixed prompt encodings.

Latents are the VAE mode (not a sample), so a cached latent is exactly what encoding again would
give. A cache entry's name hashes everything it depends on (file paths, sizes and modification
times, resolutions, the model folder), so an edited image or another model never reads a stale
entry. Files are written to a temporary name and renamed, so an interrupted run leaves no torn entry.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _fingerprint(*parts) -> str:
    digest = hashlib.sha1()
    for part in parts:
        if isinstance(part, Path):
            stat = part.stat()
            part = f"{part.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        digest.update(str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


class TensorCache:
    """A folder of safetensors files keyed by fingerprint; `enabled=False` computes every time."""

    def __init__(self, folder: str | Path, enabled: bool = True):
        self.folder = Path(folder)
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def get(self, key_parts: tuple, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not self.enabled:
            return compute()
        path = self.folder / f"{_fingerprint(*key_parts)}.safetensors"
        if path.is_file():
            self.hits += 1
            return load_file(str(path))
        self.misses += 1
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in compute().items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
        return tensors
