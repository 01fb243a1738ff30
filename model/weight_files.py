"""Reading a weight file in full: every tensor and the header metadata of one .safetensors file."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open


def read_safetensors(path: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of `path`; a clear error naming `kind` (e.g. "DreamO") for a wrong or broken file."""
    if path.suffix != ".safetensors":
        raise ValueError(f"{path.name}: {kind} weights are .safetensors files; got a {path.suffix or 'suffix-less'} file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for a truncated/foreign file
        raise ValueError(f"{path.name} is not a readable safetensors file: {error}") from error
