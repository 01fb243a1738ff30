"""Every node that takes reference images refuses one above the pixel limit, at node time (tier 2, in-process).

The over-limit inputs are expanded views of one pixel (no memory); the refusal comes before the node
touches its other inputs, so those are stand-ins where the node does not get that far.
"""

import re

import pytest
import torch

from refcustom.nodes.aligngen_conditioning import AlignGenConditioningNode
from refcustom.nodes.dreamo_reference import DreamOReferenceNode
from refcustom.nodes.shared_attention import SharedAttentionReferenceNode

SIZE = "20000x20000 (400.0 MP)"
FIX = "ImageScale / ImageScaleToTotalPixels"


def huge_image(batch=1, height=20000, width=20000):
    return torch.zeros(1, 1, 1, 3).expand(batch, height, width, 3)


def huge_mask(batch=1, height=20000, width=20000):
    return torch.ones(1, 1, 1).expand(batch, height, width)


class Untouched:
    """An input the node must not use before refusing the reference."""

    def __getattr__(self, name):
        raise AssertionError(f"the node used {name!r} before checking the reference size")


def dreamo(image, mask=None):
    return DreamOReferenceNode.execute([], Untouched(), image, "ip", 512, 0, mask)


def aligngen(image, mask=None):
    return AlignGenConditioningNode.execute(Untouched(), Untouched(), "a photo of a toy", "toy", Untouched(),
                                            Untouched(), Untouched(), image, 512, mask)


def shared_reference(model, image, mask=None):
    return SharedAttentionReferenceNode.execute(model, Untouched(), image, 1, 1, False, 0, reference_mask=mask)


def run(node, tiny_flux, image, mask=None):
    if node == "shared_attention_reference":
        return shared_reference(tiny_flux, image, mask)
    return {"dreamo_reference": dreamo, "aligngen_conditioning": aligngen}[node](image, mask)


NODES = ["dreamo_reference", "aligngen_conditioning", "shared_attention_reference"]


@pytest.mark.parametrize("node", NODES)
def test_an_over_limit_reference_image_is_refused(node, tiny_flux):
    with pytest.raises(ValueError) as error:
        run(node, tiny_flux, huge_image())
    message = str(error.value)
    assert SIZE in message and "160.0 MP limit" in message and FIX in message


@pytest.mark.parametrize("node", NODES)
def test_an_over_limit_reference_mask_is_refused(node, tiny_flux):
    image = torch.zeros(1, 64, 64, 3)
    with pytest.raises(ValueError, match=rf"reference MASK is {re.escape(SIZE)}.*{re.escape(FIX)}"):
        run(node, tiny_flux, image, huge_mask())


@pytest.mark.parametrize("node", NODES)
def test_an_over_limit_reference_batch_is_refused(node, tiny_flux):
    with pytest.raises(ValueError, match=rf"16 x 6000x4000 \(384.0 MP in all\).*256.0 MP limit.*{re.escape(FIX)}"):
        run(node, tiny_flux, huge_image(16, 4000, 6000))
