"""SynCD guidance normalization against an independent NumPy statement of the formulas (tier 1)."""

import numpy as np
import pytest
import torch

from refcustom.model.guidance import GuidanceScales, normalized_guidance, per_sample_norm
from refcustom.tests.fixtures.guidance_reference import numpy_normalized_guidance


def branches(seed, shape=(3, 4, 6, 5), image_gain=10.0):
    g = torch.Generator().manual_seed(seed)
    e0 = torch.randn(shape, generator=g)
    ei = e0 + image_gain * torch.randn(shape, generator=g)
    eit = ei + torch.randn(shape, generator=g)
    return e0, ei, eit


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_numpy(seed, normalize):
    e0, ei, eit = branches(seed)
    ours = normalized_guidance(e0, ei, eit, 8.0, 7.5, normalize=normalize)
    expected = numpy_normalized_guidance(e0, ei, eit, 8.0, 7.5, normalize)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_larger_direction_is_capped_to_the_smaller_norm():
    e0, ei, eit = branches(0, image_gain=50.0)
    out = normalized_guidance(e0, ei, eit, 1.0, 0.0)
    # with s_T = 0, out - e_I is the capped image direction: its norm is the text direction's norm
    torch.testing.assert_close(per_sample_norm(out - ei), per_sample_norm(eit - ei), rtol=1e-5, atol=1e-5)


def test_equal_norms_give_plain_dual_guidance():
    g = torch.Generator().manual_seed(4)
    e0 = torch.randn(2, 4, 8, 8, generator=g)
    direction = torch.randn(2, 4, 8, 8, generator=g)
    rotated = direction.flip(-1)  # same norm per sample, different direction
    ei, eit = e0 + direction, e0 + direction + rotated
    torch.testing.assert_close(normalized_guidance(e0, ei, eit, 3.0, 5.0),
                               normalized_guidance(e0, ei, eit, 3.0, 5.0, normalize=False), rtol=1e-5, atol=1e-5)


def test_one_sample_never_scales_another():
    e0, ei, eit = branches(5)
    full = normalized_guidance(e0, ei, eit, 8.0, 7.5)
    # blow up sample 0's image direction: sample 1 and 2 must not change
    ei_big = ei.clone()
    ei_big[0] = e0[0] + 1e6 * (ei[0] - e0[0])
    changed = normalized_guidance(e0, ei_big, eit, 8.0, 7.5)
    torch.testing.assert_close(changed[1:], full[1:], rtol=0, atol=0)
    for b in range(3):
        torch.testing.assert_close(normalized_guidance(e0[b:b + 1], ei[b:b + 1], eit[b:b + 1], 8.0, 7.5), full[b:b + 1])


def test_zero_norm_directions_give_finite_results():
    e = torch.randn(2, 4, 4, 4)
    out = normalized_guidance(e, e, e, 8.0, 7.5)
    torch.testing.assert_close(out, e)
    ei = e + 1.0
    out = normalized_guidance(e, ei, ei, 8.0, 7.5)  # text direction zero -> image capped to zero too
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ei)


def test_huge_norms_do_not_overflow():
    e0, ei, eit = branches(6)
    scale = 1e30  # squares overflow float32; the norm must not
    out = normalized_guidance(e0 * scale, ei * scale, eit * scale, 8.0, 7.5)
    assert torch.isfinite(out).all()
    expected = numpy_normalized_guidance(e0 * scale, ei * scale, eit * scale, 8.0, 7.5)
    np.testing.assert_allclose(out.double().numpy() / scale, expected / scale, rtol=1e-4, atol=1e-3)


def test_half_precision_stays_finite_and_keeps_dtype():
    e0, ei, eit = (t.half() for t in branches(7))
    out = normalized_guidance(e0, ei, eit, 8.0, 7.5)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    big = torch.full((1, 4, 4, 4), 60000.0, dtype=torch.float16)
    out = normalized_guidance(-big, big, big, 30.0, 30.0, normalize=False)
    assert torch.isfinite(out).all()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="disagree in shape"):
        normalized_guidance(torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(2, 4), 1.0, 1.0)


def test_image_scale_ramp():
    scales = GuidanceScales(text=7.5, image_start=8.0, image_increase=5.0)
    assert scales.image_at(0.0) == 8.0 and scales.image_at(1.0) == 13.0 and scales.image_at(0.5) == 10.5
    assert scales.image_at(2.0) == 13.0
