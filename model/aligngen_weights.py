"""Reading the AlignGen file that `python -m refcustom.train` (AlignGen mode) exports.

There are no public AlignGen weights: the layout is ours (train/export.py, format version 1):

    aligngen.learned_token                      [1, T5 width]   S*'s T5 input embedding
    aligngen.dem.<DeviationExtractionModule>    the DEM (model/aligngen.py; format version 1 files hold its
                                                attention as nn.MultiheadAttention keys, converted on load)
    aligngen.lora.<module>.lora_down.weight     [r, in]  reference-only LoRA, diffusers module names:
    aligngen.lora.<module>.lora_up.weight       [out, r]   transformer_blocks.i.attn.{to_qkv,to_out.0},
                                                           single_transformer_blocks.i.{attn.to_qkv,proj_out}
    metadata: refcustom.mode = "aligngen", refcustom.lora_scale, refcustom.dem_heads, refcustom.dem_mlp_ratio,
              refcustom.learned_token, refcustom.rank

`comfy_target` maps a diffusers module name onto the BFL/ComfyUI FLUX module and the output rows
the LoRA covers (single blocks fuse q|k|v with the MLP input in `linear1`: the LoRA covers the
first 3 * hidden rows only, as diffusers' separate `to_qkv` did).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .aligngen import DeviationExtractionModule
from .weight_files import read_safetensors

PREFIX = "aligngen."
TOKEN_KEY = "aligngen.learned_token"
_LORA_KEY = re.compile(r"^aligngen\.lora\.(?P<module>.+)\.lora_(?P<part>down|up)\.weight$")
_TARGETS = {
    ("transformer_blocks", "attn.to_qkv"): "double_blocks.{i}.img_attn.qkv",
    ("transformer_blocks", "attn.to_out.0"): "double_blocks.{i}.img_attn.proj",
    ("single_transformer_blocks", "attn.to_qkv"): "single_blocks.{i}.linear1",
    ("single_transformer_blocks", "proj_out"): "single_blocks.{i}.linear2",
}
_MODULE = re.compile(r"^(?P<blocks>(?:single_)?transformer_blocks)\.(?P<i>\d+)\.(?P<rest>.+)$")


@dataclass(frozen=True)
class ReferenceLoRA:
    """One reference-only LoRA: delta = scale * up @ down on output rows [0, up.shape[0]) of `target`."""

    target: str  # ComfyUI path under diffusion_model, e.g. "double_blocks.0.img_attn.qkv"
    down: torch.Tensor
    up: torch.Tensor
    key: str = ""  # the file's key prefix, e.g. "aligngen.lora.transformer_blocks.0.attn.to_qkv"


@dataclass(frozen=True)
class AlignGenWeights:
    learned_token: torch.Tensor  # [T5 width]
    dem: DeviationExtractionModule
    loras: tuple[ReferenceLoRA, ...]
    lora_scale: float
    token_text: str
    path: Path

    @property
    def t5_width(self) -> int:
        return self.learned_token.shape[-1]


def comfy_target(module: str) -> str:
    match = _MODULE.match(module)
    template = _TARGETS.get((match["blocks"], match["rest"])) if match else None
    if template is None:
        raise ValueError(f"AlignGen LoRA module {module!r} is not one this loader knows ({sorted(set(_TARGETS.values()))})")
    return template.format(i=match["i"])


def read_aligngen_file(path: str | Path, operations=nn, dem_dtype: torch.dtype = torch.float32) -> AlignGenWeights:
    """Read an AlignGen export; raise naming what was expected for anything else.

    The DEM is built with `operations` (torch.nn, or a host's own Linear/LayerNorm such as ComfyUI's
    manual-cast ops) and its tensors stored in `dem_dtype`; the small tensors (S*, LoRA) stay float32.
    """
    path = Path(path)
    tensors, meta = read_safetensors(path, "AlignGen")
    if meta.get("refcustom.mode") != "aligngen" or TOKEN_KEY not in tensors:
        hint = ""
        if meta.get("refcustom.mode") == "dreamo" or any("dreamo_task_embedding" in k for k in tensors):
            hint = " It is a DreamO file: load it with Load DreamO (FLUX)."
        elif any("lora" in k for k in tensors):
            hint = " It looks like a plain LoRA: load it with LoraLoaderModelOnly."
        raise ValueError(
            f"{path.name} is not an AlignGen file (expected {TOKEN_KEY}, aligngen.dem.* and aligngen.lora.* written by "
            f"`python -m refcustom.train` in aligngen mode).{hint}"
        )
    try:
        heads = int(meta["refcustom.dem_heads"])
        mlp_ratio = float(meta.get("refcustom.dem_mlp_ratio", 4.0))
        scale = float(meta["refcustom.lora_scale"])
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path.name}: AlignGen metadata is incomplete ({error}); re-export it with the trainer") from error
    dem_state = {k[len("aligngen.dem."):]: v for k, v in tensors.items() if k.startswith("aligngen.dem.")}
    dem = DeviationExtractionModule.from_state_dict(dem_state, heads=heads, mlp_ratio=mlp_ratio,
                                                    operations=operations, dtype=dem_dtype).eval()
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _LORA_KEY.match(key)
        if match:
            pairs.setdefault(match["module"], {})[match["part"]] = tensor.float()
    if not pairs:
        raise ValueError(f"{path.name} has no aligngen.lora.* tensors: the reference-only LoRA is missing")
    loras = []
    for module, parts in sorted(pairs.items()):
        if set(parts) != {"down", "up"}:
            raise ValueError(f"{path.name}: LoRA {module} lacks its {({'down', 'up'} - set(parts)).pop()} matrix")
        loras.append(ReferenceLoRA(comfy_target(module), parts["down"], parts["up"], f"aligngen.lora.{module}"))
    token = tensors[TOKEN_KEY].float().reshape(-1)
    if token.shape[0] != dem.config["text_dim"]:
        raise ValueError(f"{path.name}: S* is {token.shape[0]} wide but the DEM works on {dem.config['text_dim']}")
    return AlignGenWeights(token, dem, tuple(loras), scale, meta.get("refcustom.learned_token", "S*"), path)
