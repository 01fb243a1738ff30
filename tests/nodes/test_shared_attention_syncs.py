"""Masked Shared Attention does its host work once per forward pass, not once per block (tier 2).

On a GPU every `nonzero`, `.item()`, `float()` / `int()` / `bool()` of a device tensor, boolean-mask
indexing and tensor made from Python data waits for the device (or copies to it). FLUX.1-dev has 57
blocks, so such work inside the per-block attention override stalls every block. This machine has no GPU,
so the test counts those operations themselves, as PyTorch dispatches them (a TorchDispatchMode sees every
aten call, whoever makes it), while ComfyUI samples: the count the patch adds to a sampling step must not
grow with the number of blocks, and must stay a small constant.
"""

from __future__ import annotations

from collections import Counter

import comfy.patcher_extension
import nodes as comfy_nodes
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from refcustom.nodes.shared_attention import SharedAttentionReferenceNode
from refcustom.nodes.shared_attention_patch import SHARED_ATTENTION_KEY, SharedAttentionSettings, SharedAttentionWrapper
from refcustom.tests.fixtures import tiny_host_models

pytestmark = pytest.mark.tier2

aten = torch.ops.aten
# Host syncs (and host-built tensors) as the dispatcher sees them.
SYNCING = {aten.nonzero, aten._local_scalar_dense, aten.masked_select, aten.is_nonzero, aten.equal,
           aten.lift_fresh, aten.lift_fresh_copy}
BATCH, SIZE, STEPS = 3, 48, 2
FEW_BLOCKS, MANY_BLOCKS = (1, 1), (3, 6)
MOST_PER_STEP = 12  # the patch's own host work per sampling step (a few per pass), whatever the depth


class HostWorkCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in SYNCING:
            self.counts[func.overloadpacket.__name__] += 1
        elif func.overloadpacket is aten.index and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ())):
            self.counts["boolean-mask index"] += 1  # x[mask]: a nonzero inside the kernel
        return func(*args, **kwargs)


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def host_work(model, clip) -> Counter:
    positive, negative = encode(clip, "a red toy robot"), encode(clip, "")
    latent = {"samples": torch.zeros(BATCH, 16, SIZE // 8, SIZE // 8)}
    with HostWorkCounter() as counter:
        comfy_nodes.common_ksampler(model, 5, STEPS, 1.0, "euler", "simple", positive, negative, latent)
    return counter.counts


def masked(model, clip):
    masks = torch.zeros(BATCH, SIZE, SIZE)
    masks[:, 8:40, 8:30] = 1.0
    settings = SharedAttentionSettings(masks=masks, dilation=1, full_shared_steps=0)
    return with_wrapper(model, settings)


def estimated(model, clip):
    from refcustom.nodes.shared_attention import subject_word_positions

    settings = SharedAttentionSettings(masks=None, dilation=1, full_shared_steps=0,
                                       word_tokens=subject_word_positions(clip, "a red toy robot", "robot"))
    return with_wrapper(model, settings)


def reference(model, clip):
    vae = tiny_host_models.build_tiny_vae(seed=0)
    images = torch.randint(0, 256, (2, SIZE, SIZE, 3), generator=torch.Generator().manual_seed(9)).float() / 255
    reference_masks = torch.zeros(2, SIZE, SIZE)
    reference_masks[:, 8:40, 8:30] = 1.0
    return SharedAttentionReferenceNode.execute(model, vae, images, 1, 0, False, 3,
                                                reference_mask=reference_masks).args[0]


def with_wrapper(model, settings):
    patched = model.clone()
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, SHARED_ATTENTION_KEY,
                                 SharedAttentionWrapper(settings))
    return patched


@pytest.mark.parametrize("mode", [masked, estimated, reference], ids=lambda f: f.__name__)
def test_host_work_per_step_does_not_grow_with_the_number_of_blocks(tiny_clip, mode):
    added = {}
    for blocks in (FEW_BLOCKS, MANY_BLOCKS):
        flux = tiny_host_models.build_tiny_flux(seed=0, blocks=blocks)
        plain = host_work(flux, tiny_clip)
        patched = host_work(mode(flux, tiny_clip), tiny_clip)
        added[blocks] = patched - plain  # Counter subtraction keeps positive counts only
        assert not (plain - patched), f"the patch removed host work ComfyUI does? {plain - patched}"
    few, many = added[FEW_BLOCKS], added[MANY_BLOCKS]
    assert few == many, f"host work grows with the blocks: {sum(few.values())} ops at {FEW_BLOCKS} blocks, " \
                        f"{sum(many.values())} at {MANY_BLOCKS}: {few} vs {many}"
    assert sum(many.values()) <= MOST_PER_STEP * STEPS, many
