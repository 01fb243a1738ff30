"""Reference resize equals the official DreamO one: OpenCV INTER_AREA on uint8 (tier 1).

The oracle (tests/fixtures/official_resize.py) restates bytedance/DreamO's `resize_numpy_image_area`
on uint8 arrays, and BEN2's PIL composite for masks; a NumPy area average checks OpenCV itself on
downscales. Inputs are what LoadImage gives: uint8 / 255 as float32.
"""

import math

import numpy as np
import pytest
import torch

from refcustom.model.reference_preprocess import area_resize_size, prepare_reference, resize_area, to_uint8
from refcustom.tests.fixtures.official_resize import (
    box_filter_resize,
    natural_image,
    official_area_size,
    official_reference,
    official_resize,
    official_white_composite,
    overlap_matrix,
    random_image,
)

IMAGES = {"random": random_image, "natural": natural_image}
# (height, width, ref_res): non-square downscales (non-integer and integer factors) and upscales
SIZES = {"down": (700, 530, 256), "down-integer": (512, 768, 128), "up": (90, 150, 256)}
ID_SIZES = {"down": (900, 620, 0), "up": (300, 420, 0)}


def as_image(*arrays: np.ndarray) -> torch.Tensor:
    """A ComfyUI IMAGE batch from uint8 arrays, as LoadImage makes it."""
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


def as_uint8(image: torch.Tensor) -> np.ndarray:
    """Our output back on the uint8 scale (int, so differences do not wrap)."""
    return np.rint(image.numpy().astype(np.float64) * 255.0).astype(np.int64)


def max_steps(ours: np.ndarray, oracle: np.ndarray) -> int:
    assert ours.shape == oracle.shape
    return int(np.abs(ours - oracle.astype(np.int64)).max())


def test_area_resize_size_is_the_official_formula():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        h, w = (int(v) for v in rng.integers(16, 9000, 2))
        res = int(rng.integers(1, 129)) * 16
        expected = official_area_size(h, w, res)
        if min(expected) < 16:
            with pytest.raises(ValueError, match="too narrow"):
                area_resize_size(h, w, res)
        else:
            assert area_resize_size(h, w, res) == expected, (h, w, res)


@pytest.mark.parametrize("kind", sorted(IMAGES))
@pytest.mark.parametrize("case", sorted(SIZES))
@pytest.mark.parametrize("task", ["ip", "try-on", "style"])
def test_area_tasks_equal_opencv_inter_area_on_uint8(task, case, kind):
    h, w, ref_res = SIZES[case]
    items = [IMAGES[kind](h, w, seed) for seed in (1, 2)]  # batch 2
    out = prepare_reference(as_image(*items), task, ref_res)
    oracles = [official_reference(item, task, ref_res) for item in items]
    assert tuple(out.shape) == (2, *oracles[0].shape)
    assert (out.shape[1] < h) == (case != "up")
    for ours, oracle in zip(as_uint8(out), oracles, strict=True):
        assert max_steps(ours, oracle) <= 1
        assert np.array_equal(ours, oracle)  # the same OpenCV call on the same uint8 image: bit for bit


@pytest.mark.parametrize("kind", sorted(IMAGES))
@pytest.mark.parametrize("case", sorted(ID_SIZES))
def test_id_task_is_a_centre_square_resized_to_512_with_inter_area(case, kind):
    h, w, _ = ID_SIZES[case]
    items = [IMAGES[kind](h, w, seed) for seed in (3, 4)]
    out = prepare_reference(as_image(*items), "id", 768)  # ref_res does not apply to id
    assert tuple(out.shape) == (2, 512, 512, 3)
    for ours, item in zip(as_uint8(out), items, strict=True):
        oracle = official_reference(item, "id", 0)
        assert max_steps(ours, oracle) <= 1
        assert np.array_equal(ours, oracle)


def test_overlap_matrix_is_an_area_average():
    weights = overlap_matrix(7, 3)  # each output pixel covers 7/3 input pixels
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    np.testing.assert_allclose(weights[0], [3 / 7, 3 / 7, 1 / 7, 0, 0, 0, 0])
    flat = np.full((40, 30, 3), 77, dtype=np.uint8)
    np.testing.assert_allclose(box_filter_resize(flat, (16, 16)), 77.0)


@pytest.mark.parametrize("kind", sorted(IMAGES))
@pytest.mark.parametrize("case", ["down", "down-integer"])
def test_downscale_is_the_area_average_independently_of_opencv(case, kind):
    h, w, ref_res = SIZES[case]
    item = IMAGES[kind](h, w, 5)
    out = as_uint8(prepare_reference(as_image(item), "style", ref_res))[0]
    average = box_filter_resize(item, area_resize_size(h, w, ref_res))
    # ours (OpenCV) is the exact average rounded to uint8: half a step away at most, never a whole one
    assert np.abs(out - average).max() <= 0.5 + 1e-3
    assert np.abs(official_resize(item, out.shape[:2]) - average).max() <= 0.5 + 1e-3


def ellipse_mask(h: int, w: int, soft: bool) -> np.ndarray:
    """uint8 [H, W] alpha: an ellipse (the subject), hard-edged or feathered like a matting result."""
    y, x = np.mgrid[0:h, 0:w]
    r = np.sqrt(((y - h * 0.45) / (h * 0.35)) ** 2 + ((x - w * 0.5) / (w * 0.3)) ** 2)
    alpha = np.clip((1.15 - r) / 0.3, 0.0, 1.0) if soft else (r < 1.0).astype(np.float64)
    return np.rint(alpha * 255).astype(np.uint8)


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("task", ["ip", "try-on", "id"])
def test_mask_whitens_at_full_resolution_then_resizes_like_the_official_composite(task, soft):
    pytest.importorskip("PIL")
    h, w, ref_res = SIZES["down"]
    items = [natural_image(h, w, 6), random_image(h, w, 7)]
    alphas = [ellipse_mask(h, w, soft), ellipse_mask(h, w, soft)[::-1].copy()]
    mask = torch.from_numpy(np.stack(alphas)).float() / 255.0
    out = as_uint8(prepare_reference(as_image(*items), task, ref_res, mask))
    for ours, item, alpha in zip(out, items, alphas, strict=True):
        oracle = official_reference(official_white_composite(item, alpha), task, ref_res)
        if soft:  # PIL blends in integer arithmetic, we in float: one step apart at most
            assert max_steps(ours, oracle) <= 1
        else:
            assert np.array_equal(ours, oracle)
    assert (out[0][:4, :4] == 255).all()  # the background corner is white


@pytest.mark.parametrize("size", [(64, 200), (120, 40), (700, 530), (1000, 600)], ids=str)
def test_resize_area_stretches_to_any_size_like_opencv(size):
    items = [natural_image(700, 530, 8), random_image(700, 530, 9)]
    out = as_uint8(resize_area(as_image(*items), size))
    for ours, item in zip(out, items, strict=True):
        assert np.array_equal(ours, official_resize(item, size))


def test_uint8_conversion_covers_every_row_block_and_leaves_the_input_alone():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 600, 70, 4, generator=g) * 1.2 - 0.1  # 600 rows: blocks of 256, 256, 88; RGBA
    before = image.clone()
    expected = np.clip(np.rint(image[..., :3].numpy() * 255.0), 0, 255).astype(np.uint8)
    assert np.array_equal(to_uint8(image), expected)
    mask = torch.rand(2, 600, 70, generator=g)
    whitened = image[..., :3] * mask[..., None] + (1 - mask[..., None])
    assert np.abs(to_uint8(image, mask).astype(int) - np.rint(whitened.numpy() * 255).clip(0, 255)).max() <= 1
    assert torch.equal(image, before)


def test_output_sides_are_multiples_of_16_and_about_ref_res_squared():
    out = prepare_reference(as_image(natural_image(731, 1283, 10)), "ip", 512)
    h, w = out.shape[1:3]
    assert h % 16 == 0 and w % 16 == 0
    assert math.isclose(h * w, 512 * 512, rel_tol=0.1)
