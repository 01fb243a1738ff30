"""Reference inputs are bounded: MAX_REFERENCE_PIXELS per image, MAX_REFERENCE_BATCH_PIXELS per batch (tier 1).

Over-limit inputs are expanded views of a single pixel (`torch.zeros(1, 1, 1, 3).expand(...)`): they
cost nothing, and the refusal must come from the shape alone, before preprocessing reads or copies
pixels (to_uint8 and the mask check are made to fail the test if reached). Acceptance at the real
limit is checked on the shape (processing 160 MP is bench/reference_resize.py's job); the whole path
is run just under and just over a small limit set for the test.
"""

import math

import pytest
import torch

from refcustom.model import reference_preprocess
from refcustom.model.reference_preprocess import (
    MAX_REFERENCE_BATCH_PIXELS,
    MAX_REFERENCE_PIXELS,
    check_reference_size,
    prepare_reference,
    resize_area,
)

SIDE = math.isqrt(MAX_REFERENCE_PIXELS)  # a square just under (or at) the limit


def huge_image(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.zeros(1, 1, 1, 3).expand(batch, height, width, 3)


def huge_mask(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.ones(1, 1, 1).expand(batch, height, width)


@pytest.fixture
def no_pixel_work(monkeypatch):
    """Fail the test if preprocessing gets as far as reading or copying pixels."""

    def refuse(*args, **kwargs):
        raise AssertionError("preprocessing reached the pixels of an over-limit reference")

    monkeypatch.setattr(reference_preprocess, "to_uint8", refuse)
    monkeypatch.setattr(reference_preprocess, "normalize_mask", refuse)


def test_the_limits_admit_every_camera_photo():
    assert 14204 * 10652 <= MAX_REFERENCE_PIXELS  # Phase One IQ4 150 MP, the largest camera sensor
    assert 11648 * 8736 <= MAX_REFERENCE_PIXELS  # 100 MP medium format (Fujifilm GFX100)
    assert 10 * 6000 * 4000 <= MAX_REFERENCE_BATCH_PIXELS  # ten 24 MP photos in one batch
    assert MAX_REFERENCE_PIXELS <= MAX_REFERENCE_BATCH_PIXELS


def test_an_image_at_the_limit_passes_the_check():
    check_reference_size(huge_image(1, SIDE, SIDE), huge_mask(1, SIDE, SIDE))
    check_reference_size(huge_image(1, 1, MAX_REFERENCE_PIXELS))  # exactly at the limit
    check_reference_size(huge_image(1, SIDE, SIDE), huge_mask(1, SIDE, SIDE)[0])  # a [H, W] mask
    batch = MAX_REFERENCE_BATCH_PIXELS // (6000 * 4000)
    check_reference_size(huge_image(batch, 4000, 6000))


@pytest.mark.parametrize("task", ["ip", "id", "style"])
def test_an_image_over_the_limit_is_refused_before_any_pixel_work(no_pixel_work, task):
    image = huge_image(1, 20000, 20000)
    with pytest.raises(ValueError) as error:
        prepare_reference(image, task, 512)
    message = str(error.value)
    assert "20000x20000 (400.0 MP)" in message  # the size
    assert "160.0 MP limit" in message  # the limit
    assert "ImageScale / ImageScaleToTotalPixels" in message  # the fix


def test_one_pixel_over_the_limit_is_refused(no_pixel_work):
    with pytest.raises(ValueError, match="limit for reference images"):
        prepare_reference(huge_image(1, 1, MAX_REFERENCE_PIXELS + 1), "ip", 512)


def test_an_over_limit_mask_is_refused_before_it_is_read(no_pixel_work):
    image = huge_image(1, 20000, 20000)
    with pytest.raises(ValueError, match=r"reference MASK is 20000x20000 .*make the mask from the smaller image"):
        check_reference_size(huge_image(1, 64, 64), huge_mask(1, 20000, 20000))
    with pytest.raises(ValueError, match="ImageScaleToTotalPixels"):
        prepare_reference(image, "ip", 512, huge_mask(1, 20000, 20000))


def test_a_batch_over_the_total_is_refused_though_each_image_is_small(no_pixel_work):
    image = huge_image(16, 4000, 6000)  # sixteen 24 MP photos, 384 MP
    with pytest.raises(ValueError) as error:
        prepare_reference(image, "ip", 512)
    message = str(error.value)
    assert "16 x 6000x4000 (384.0 MP in all)" in message
    assert "256.0 MP limit for one batch" in message
    assert "ImageScaleToTotalPixels" in message


def test_resize_area_checks_too(no_pixel_work):
    """Shared Attention Reference resizes at sampling time through resize_area, not prepare_reference."""
    with pytest.raises(ValueError, match="limit for reference images"):
        resize_area(huge_image(1, 20000, 20000), (64, 64))


def test_just_under_the_limit_is_processed_and_just_over_is_not(monkeypatch):
    """The whole path with a limit small enough to run: 64x64 = the limit passes, one row more does not."""
    monkeypatch.setattr(reference_preprocess, "MAX_REFERENCE_PIXELS", 64 * 64)
    monkeypatch.setattr(reference_preprocess, "MAX_REFERENCE_BATCH_PIXELS", 2 * 64 * 64)
    image = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    assert prepare_reference(image, "ip", 32, torch.ones(1, 64, 64)).shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match=r"65x64 \(0.0 MP\)"):
        prepare_reference(torch.rand(1, 64, 65, 3), "ip", 32)
    with pytest.raises(ValueError, match="limit for one batch"):
        prepare_reference(torch.rand(3, 64, 64, 3), "ip", 32)
