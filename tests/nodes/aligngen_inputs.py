"""Shared by the AlignGen node tests: a tiny Redux style model (core classes) and a CLIP vision output."""

from types import SimpleNamespace

import comfy.ldm.flux.redux
import comfy.sd
import torch


def tiny_redux(seed: int = 1, vision_width: int = 48, text_width: int = 32, tokens: int = 9):
    """(STYLE_MODEL with random Redux weights, CLIP_VISION_OUTPUT-like object with last_hidden_state)."""
    torch.manual_seed(seed)
    encoder = comfy.ldm.flux.redux.ReduxImageEncoder(redux_dim=vision_width, txt_in_features=text_width)
    with torch.no_grad():  # core ops skip init: draw every weight
        for p in encoder.parameters():
            p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return comfy.sd.StyleModel(encoder), SimpleNamespace(last_hidden_state=torch.randn(1, tokens, vision_width))
