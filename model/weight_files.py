"""Reading a weight file in full: every tensor and the header metadata of one .safetensors file."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

# First bytes of the formats most often renamed to .safetensors by mistake.
_FOREIGN_MAGIC = (
    (b"PK\x03\x04", "a PyTorch .ckpt/.pt/.bin checkpoint (a zipped pickle)"),
    (b"\x80", "a Python pickle (.ckpt/.pt/.bin)"),
    (b"GGUF", "a GGUF file"),
)


def _foreign_format(path: Path) -> str | None:
    """What `path` is when its first bytes name another format (None if unknown)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return next((name for magic, name in _FOREIGN_MAGIC if head.startswith(magic)), None)


def require_finite(tensors: dict[str, torch.Tensor], file_name: str) -> None:
    """Refuse a file holding NaN/inf weights (a broken download or a training run that diverged): it samples black."""
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        values = tensor if tensor.element_size() > 1 else tensor.to(torch.float16)  # no isfinite for fp8 on CPU
        if not bool(torch.isfinite(values).all()):
            raise ValueError(
                f"{file_name}: tensor {key} holds NaN/inf values, which would sample a black image. The file is "
                "corrupt (a broken download, or exported from a training run whose loss went NaN): download it "
                "again or export it from an earlier checkpoint."
            )


def read_safetensors(path: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of `path`; a clear error naming `kind` (e.g. "DreamO") for a wrong or broken file."""
    if path.suffix != ".safetensors":
        raise ValueError(f"{path.name}: {kind} weights are .safetensors files; got a {path.suffix or 'suffix-less'} file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors, metadata = {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for a truncated/foreign file
        foreign = _foreign_format(path)
        if foreign is not None:
            raise ValueError(
                f"{path.name} is not a safetensors file: it is {foreign} renamed to .safetensors. Get the "
                f".safetensors release of these {kind} weights (pickles can run code, so they are not loaded)."
            ) from error
        raise ValueError(
            f"{path.name} is not a readable safetensors file ({error}): it is truncated or in another format. "
            f"Download the {kind} file again."
        ) from error
    require_finite(tensors, path.name)
    return tensors, metadata
