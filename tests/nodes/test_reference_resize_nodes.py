"""Reference resizing inside the nodes (tier 2, in-process).

DreamO Reference outputs the official resize (OpenCV INTER_AREA on uint8, restated in
tests/fixtures/official_resize.py). Shared Attention Reference VAE-encodes its references at the
sampled latent's pixel size, never at the upload's: a small VAE wrapper records what the VAE sees.
"""

import comfy.patcher_extension
import nodes as comfy_nodes
import numpy as np
import pytest
import torch

from refcustom.model.reference_preprocess import resize_area
from refcustom.nodes.dreamo_reference import DreamOReferenceNode
from refcustom.nodes.shared_attention import SharedAttentionReferenceNode
from refcustom.nodes.shared_attention_patch import SHARED_ATTENTION_KEY
from refcustom.tests.fixtures.official_resize import natural_image, official_reference, official_white_composite


class EncodeSpy:
    """The VAE, recording the pixel shape of every encode call. With `refuse_above` (pixels), a larger
    encode fails the test before it runs: a full-size 6000x4000 encode would take the machine's memory."""

    def __init__(self, vae, refuse_above=None):
        self.vae = vae
        self.refuse_above = refuse_above
        self.shapes = []

    def encode(self, pixels):
        self.shapes.append(tuple(pixels.shape))
        if self.refuse_above is not None and pixels.shape[1] * pixels.shape[2] > self.refuse_above:
            raise AssertionError(f"the VAE was asked to encode {pixels.shape[2]}x{pixels.shape[1]} pixels")
        return self.vae.encode(pixels)

    def __getattr__(self, name):
        return getattr(self.vae, name)


def as_image(*arrays):
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def sample(model, clip, height, width, steps=2):
    positive = encode(clip, "a red toy robot")
    latent = {"samples": torch.zeros(1, 16, height // 8, width // 8)}
    (out,) = comfy_nodes.common_ksampler(model, 5, steps, 1.0, "euler", "simple", positive, positive, latent)
    return out["samples"]


@pytest.mark.parametrize("task", ["ip", "style", "id"])
def test_dreamo_reference_outputs_the_official_opencv_resize(tiny_clip, tiny_vae, task):
    item = natural_image(300, 437, 11)  # non-square, with one-pixel text-like strokes
    spy = EncodeSpy(tiny_vae)
    positive, prepared = DreamOReferenceNode.execute(
        encode(tiny_clip, "a toy"), spy, as_image(item), task, 128, 0, None
    ).args
    oracle = official_reference(item, task, 128)
    ours = np.rint(prepared[0].numpy().astype(np.float64) * 255.0).astype(np.int64)
    assert ours.shape == oracle.shape
    assert np.abs(ours - oracle).max() <= 1
    assert spy.shapes == [(1, *oracle.shape)]  # the VAE encodes exactly the preprocessed reference


def test_dreamo_reference_mask_composites_at_full_size_then_resizes(tiny_clip, tiny_vae):
    item = natural_image(300, 437, 12)
    alpha = np.zeros((300, 437), dtype=np.uint8)
    alpha[40:260, 100:330] = 255
    mask = torch.from_numpy(alpha)[None].float() / 255.0
    _, prepared = DreamOReferenceNode.execute(
        encode(tiny_clip, "a toy"), tiny_vae, as_image(item), "ip", 128, 0, mask
    ).args
    oracle = official_reference(official_white_composite(item, alpha), "ip", 128)
    ours = np.rint(prepared[0].numpy().astype(np.float64) * 255.0).astype(np.int64)
    assert np.abs(ours - oracle).max() <= 1


def test_shared_attention_reference_encodes_at_the_sampled_latent_size(tiny_flux, tiny_clip, tiny_vae):
    item = natural_image(300, 400, 13)  # a 400x300 upload
    reference = as_image(item, item[::-1].copy())
    spy = EncodeSpy(tiny_vae)
    (patched,) = SharedAttentionReferenceNode.execute(tiny_flux, spy, reference, 1, 1, False, 3).args
    assert spy.shapes == []  # nothing is encoded before the sampled size is known

    sample(patched, tiny_clip, height=32, width=48)
    assert spy.shapes == [(2, 32, 48, 3)]  # the two references, at the latent's pixel size
    [wrapper] = patched.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, SHARED_ATTENTION_KEY)
    settings = wrapper.settings
    expected = tiny_flux.model.process_latent_in(tiny_vae.encode(resize_area(reference, (32, 48))).float())
    torch.testing.assert_close(settings.references.latents((4, 6)), expected, rtol=1e-5, atol=1e-5)
    assert len(spy.shapes) == 1  # ... and those latents were cached, not encoded again

    sample(patched, tiny_clip, height=32, width=48)
    assert len(spy.shapes) == 1  # the same size samples again without encoding
    sample(patched, tiny_clip, height=48, width=32)
    assert spy.shapes[1:] == [(2, 48, 32, 3)]  # another size: encoded at that size


def test_a_6000x4000_reference_never_reaches_the_vae_at_full_size(tiny_flux, tiny_clip, tiny_vae):
    reference = torch.rand(1, 4000, 6000, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 4000, 6000)
    mask[:, 1000:3000, 1500:4500] = 1.0
    spy = EncodeSpy(tiny_vae, refuse_above=1024 * 1024)
    (patched,) = SharedAttentionReferenceNode.execute(
        tiny_flux, spy, reference, 1, 1, False, 3, reference_mask=mask
    ).args
    out = sample(patched, tiny_clip, height=32, width=48, steps=2)
    assert spy.shapes == [(1, 32, 48, 3)]
    assert torch.isfinite(out).all()
