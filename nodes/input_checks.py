"""Checks the nodes run on their inputs before any work starts.

- FLOAT widgets: ComfyUI's HTTP API turns "NaN" into float('nan'), and NaN passes its min/max check
  (every comparison with NaN is False); ±inf and out-of-range numbers are refused by core's min/max
  validation over the API but not for a direct Python call. A NaN strength or scale would sample a black
  image or turn a feature silently off, so every FLOAT input is checked here for being finite.
- Reference batches: core repeats a reference batch to the latent batch, or cuts it, without a word
  (`comfy.utils.repeat_to_batch_size` in `CONDList.process_cond`). A reference batch must be 1 (shared
  by every latent) or exactly the latent batch; the model wrappers check it when sampling starts.
"""

from __future__ import annotations

import math

from comfy_api.latest import io


def require_finite_floats(node: type[io.ComfyNode], values: dict) -> None:
    """ValueError naming the node, the input and the fix if one of `node`'s FLOAT inputs in `values` is NaN/±inf."""
    schema = node.define_schema()
    for item in schema.inputs:
        if not isinstance(item, io.Float.Input) or values.get(item.id) is None:
            continue
        value = values[item.id]
        if not math.isfinite(float(value)):
            raise ValueError(
                f"{schema.display_name}: {item.id} is {value}, not a finite number (NaN and infinity would give a "
                f"black or unchanged image). Set {item.id} to a number between {item.min} and {item.max} "
                f"(default {item.default})."
            )


def latent_batch_of(x, transformer_options: dict) -> int:
    """Latents per conditioning in one model call: core batches several conds as chunks of the latent batch."""
    return x.shape[0] // max(1, len(transformer_options.get("cond_or_uncond", [0])))


def require_reference_batch(node: str, reference_batch: int, latent_batch: int, fix: str) -> None:
    """A reference batch pairs with the latents when it is 1 (shared) or the latent batch (one each)."""
    if reference_batch not in (1, latent_batch):
        raise ValueError(
            f"{node}: its batch of {reference_batch} reference images cannot pair with a latent batch of "
            f"{latent_batch} (ComfyUI would silently {'drop' if reference_batch > latent_batch else 'repeat'} "
            "references). "
            f"A reference batch must be 1 (shared by every latent) or equal to the latent batch: {fix}"
        )
