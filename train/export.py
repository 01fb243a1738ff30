"""Writing what the trainer learned in the formats the nodes load.

DreamO: the official `dreamo.safetensors` layout (shared/notes/dreamo-reference.md 1.2-1.3), so a
trained file and the official one are interchangeable in `Load DreamO (FLUX)`:
  `double_blocks_<i>.processor.{qkv_lora1,qkv_lora2,proj_lora1,proj_lora2}.{down,up}.weight`,
  `single_blocks_<i>.processor.{qkv_lora,proj_lora}.{down,up}.weight`, no alpha (peft's
  alpha / rank scale is folded into `up`), plus `dreamo_task_embedding.weight` [2, D],
  `dreamo_idx_embedding.weight` [10, D] and `dreamo_t5_embedding.weight` [10, T5 width].
The header metadata records mode, rank, base model and stages.

AlignGen: see `export_aligngen` (our own layout; there is no official one).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..model.dreamo_weights import INDEX_KEY, T5_KEY, TASK_KEY

_DREAMO_MODULES = {
    ("transformer_blocks", "attn.to_qkv"): ("double", "qkv_lora1"),
    ("transformer_blocks", "attn.to_added_qkv"): ("double", "qkv_lora2"),
    ("transformer_blocks", "attn.to_out.0"): ("double", "proj_lora1"),
    ("transformer_blocks", "attn.to_add_out"): ("double", "proj_lora2"),
    ("single_transformer_blocks", "attn.to_qkv"): ("single", "qkv_lora"),
    ("single_transformer_blocks", "proj_out"): ("single", "proj_lora"),
}
_PEFT_KEY = re.compile(r"^(?P<blocks>(?:single_)?transformer_blocks)\.(?P<i>\d+)\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def dreamo_original_state_dict(trainable: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Trainer state (peft keys under `lora.`, embedding tables) -> official DreamO keys."""
    out = {}
    for key, tensor in trainable.items():
        if not key.startswith("lora."):
            continue
        match = _PEFT_KEY.match(key.removeprefix("lora."))
        target = _DREAMO_MODULES.get((match["blocks"], match["module"])) if match else None
        if target is None:
            raise ValueError(f"LoRA module {key} is not one of DreamO's targets; cannot write the official layout")
        kind, tag = target
        part = "down" if match["ab"] == "A" else "up"
        out[f"{kind}_blocks_{match['i']}.processor.{tag}.{part}.weight"] = tensor * scale if part == "up" else tensor
    out[TASK_KEY] = trainable["condition.task"]
    out[INDEX_KEY] = trainable["condition.index"]
    out[T5_KEY] = trainable["placeholders"]
    return out


def _metadata(config, base_model: str, created: str, extra: dict | None = None) -> dict[str, str]:
    stages = [{"name": s.name, "steps": s.steps, "subsets": s.subsets, "reference_token_drop": s.reference_token_drop}
              for s in config.stages]
    meta = {"refcustom.mode": config.mode, "refcustom.base_model": base_model, "refcustom.stages": json.dumps(stages),
            "refcustom.created": created, "refcustom.format_version": "1"}
    for key, value in (extra or {}).items():
        meta[f"refcustom.{key}"] = str(value)
    return meta


def export_trained(method, config, path: Path, base_model: str, created: str) -> Path:
    dtype = DTYPES[config.run.export_dtype]
    trainable = method.trainable_state_dict()
    if config.mode == "dreamo":
        rank = config.lora.rank
        scale = (config.lora.alpha or rank) / rank
        tensors = dreamo_original_state_dict(trainable, scale)
        meta = _metadata(config, base_model, created, {"rank": rank, "layout": "dreamo-original"})
    else:
        tensors, extra = method.export_tensors()
        meta = _metadata(config, base_model, created, extra)
    tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    # safetensors (0.8) creates its file with mode 0600. An export is a model file to share like any other:
    # it gets what a plain open() would give it under the current umask (0644 under 022).
    os.chmod(tmp, 0o666 & ~current_umask())
    tmp.replace(path)
    return path


def current_umask() -> int:
    """The process umask, read from /proc where it is listed (os.umask can only read it by setting it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
