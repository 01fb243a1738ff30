"""Masked Shared Attention: gathered kernel vs the dense definition, masks, Otsu (tier 1)."""

import numpy as np
import pytest
import torch

from refcustom.model.shared_attention import (
    dense_shared_attention,
    foreground_from_attention,
    foreground_tokens,
    masked_shared_attention,
    otsu_thresholds,
    shared_attention_bias,
    word_attention_maps,
)


def qkv(batch, heads, text, image, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, text + image, dim, generator=g) for _ in range(3)]


@pytest.mark.parametrize("batch,heads,text,image,dim", [(2, 1, 3, 8, 4), (3, 2, 5, 16, 8), (4, 2, 0, 12, 16),
                                                         (1, 2, 4, 9, 8), (4, 3, 7, 25, 8)])
@pytest.mark.parametrize("coverage", [0.0, 0.3, 1.0])
def test_gathered_equals_dense_definition(batch, heads, text, image, dim, coverage):
    q, k, v = qkv(batch, heads, text, image, dim, seed=batch * 100 + image)
    g = torch.Generator().manual_seed(7)
    foreground = torch.rand(batch, image, generator=g) < coverage
    ours = masked_shared_attention(q, k, v, text, foreground)
    reference = dense_shared_attention(q, k, v, text, foreground)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_no_foreground_is_plain_per_image_attention():
    q, k, v = qkv(3, 2, 4, 10, 8, seed=1)
    out = masked_shared_attention(q, k, v, 4, torch.zeros(3, 10, dtype=torch.bool))
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_bias_follows_the_rules():
    fg = torch.tensor([[True, False], [False, True]])
    bias = shared_attention_bias(1, fg)  # per image: [text, img0, img1]; sequence of 6
    allowed = bias == 0
    # image 0's image rows (1, 2) see own tokens 0-2 and image 1's foreground token (5), never its text (3)
    assert allowed[1].tolist() == [True, True, True, False, False, True]
    # image 0's text row sees only its own tokens
    assert allowed[0].tolist() == [True, True, True, False, False, False]
    # image 1's image rows see image 0's foreground token (1)
    assert allowed[4].tolist() == [False, True, False, True, True, True]


def test_shape_errors():
    q, k, v = qkv(2, 1, 2, 4, 4, seed=0)
    with pytest.raises(ValueError, match="foreground must be"):
        masked_shared_attention(q, k, v, 2, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="share a"):
        masked_shared_attention(q, k[:, :, :3], v, 2, torch.ones(2, 4, dtype=torch.bool))


def numpy_dilate(mask, size):
    r = size // 2
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            out[y, x] = padded[y:y + size, x:x + size].max()
    return out


@pytest.mark.parametrize("dilation", [1, 3, 9])
def test_foreground_tokens_area_threshold_dilation(dilation):
    mask = torch.zeros(2, 64, 96)
    mask[0, 10:12, 20:22] = 1.0  # a few pixels: any coverage of a 16 px token counts
    mask[1, 32:64, 0:48] = 0.5
    tokens = foreground_tokens(mask, (4, 6), dilation=dilation).reshape(2, 4, 6).numpy()
    # independent: per-token area sum > 0, then a square max filter
    area = mask.reshape(2, 4, 16, 6, 16).sum(dim=(2, 4)).numpy() > 0
    for b in range(2):
        np.testing.assert_array_equal(tokens[b], numpy_dilate(area[b].astype(np.uint8), dilation).astype(bool))


def numpy_otsu(values, bins):
    hist, edges = np.histogram(values, bins=bins, range=(values.min(), values.max()))
    centers = (edges[:-1] + edges[1:]) / 2
    best, best_t = -1.0, edges[-1]
    for t in range(1, bins):
        w0, w1 = hist[:t].sum(), hist[t:].sum()
        if w0 == 0 or w1 == 0:
            continue
        m0 = (hist[:t] * centers[:t]).sum() / w0
        m1 = (hist[t:] * centers[t:]).sum() / w1
        between = w0 * w1 * (m0 - m1) ** 2
        if between > best:
            best, best_t = between, edges[t]
    return best_t


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_otsu_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(0.2, 0.05, 300), rng.normal(0.8, 0.05, 100)]).astype(np.float32)
    ours = float(otsu_thresholds(torch.from_numpy(values)[None], bins=10)[0, 0])
    assert ours == pytest.approx(numpy_otsu(values, 10), abs=1e-5)
    assert 0.3 < ours < 0.7


def test_batched_otsu_matches_numpy_per_row_and_leaves_constant_rows_empty():
    rng = np.random.default_rng(7)
    rows = [np.concatenate([rng.normal(0.2, 0.05, 300), rng.normal(0.8, 0.05, 100)]),
            rng.gamma(2.0, 1.0, 400), np.full(400, 0.3)]
    values = torch.from_numpy(np.stack(rows).astype(np.float32))
    ours = otsu_thresholds(values, bins=10)[:, 0]
    for row, threshold in zip(rows[:2], ours[:2], strict=True):
        assert float(threshold) == pytest.approx(numpy_otsu(row.astype(np.float32), 10), abs=1e-5)
    assert float(ours[2]) == pytest.approx(0.3) and not (values[2] > ours[2]).any()


def test_batched_word_maps_equal_the_softmax_definition_in_float64():
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(3, 2, 10, 8, generator=g), torch.randn(3, 2, 6, 8, generator=g)
    ours = word_attention_maps(q, k, torch.tensor([1, 4]))
    probabilities = torch.softmax(torch.einsum("bhnd,bhtd->bhnt", q.double(), k.double()) / 8 ** 0.5, dim=-1)
    torch.testing.assert_close(ours.double(), probabilities[..., [1, 4]].mean(dim=(1, 3)), rtol=1e-5, atol=1e-6)
    assert ours.dtype == torch.float32
    # bf16 inputs (a GPU model's dtype) stay within bf16's precision of the definition
    low = word_attention_maps(q.bfloat16(), k.bfloat16(), torch.tensor([1, 4]))
    torch.testing.assert_close(low.double(), probabilities[..., [1, 4]].mean(dim=(1, 3)), rtol=3e-2, atol=3e-3)


def test_a_plan_gathers_own_tokens_and_the_others_lent_tokens():
    """The plan's key rows for image i, against a list written from the definition."""
    from refcustom.model.shared_attention import SharedAttentionPlan

    foreground = torch.tensor([[True, False, True], [False, False, False], [False, True, False]])
    plan = SharedAttentionPlan.build(foreground, text_tokens=2, length=5, borrowers=[True, True, False])
    rows = list(zip(plan.key_batch.tolist(), plan.key_token.tolist(), strict=True))
    first, second = rows[:plan.lengths[0]], rows[plan.lengths[0]:]
    assert first == [(0, t) for t in range(5)] + [(2, 3)]                   # own 5 + image 2's token 1 (2 + 1)
    assert second == [(1, t) for t in range(5)] + [(0, 2), (0, 4), (2, 3)]  # own 5 + image 0's 0, 2 + image 2's 1
    assert plan.borrowers == (0, 1) and plan.loners.tolist() == [2]


def test_attention_maps_to_foreground():
    attention = torch.full((2, 16), 0.1)
    attention[0, 5] = 0.9
    attention[1, :] = 0.5  # constant: nothing above the threshold
    fg = foreground_from_attention(attention, (4, 4), dilation=3).reshape(2, 4, 4)
    assert fg[0, 0:3, 0:3].all() and fg[0].sum() == 9  # token (1, 1) dilated 3x3
    assert not fg[1].any()


def test_word_attention_map_is_the_mean_cross_attention_to_the_words():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(3, 10, 8, generator=g), torch.randn(3, 6, 8, generator=g)
    ours = word_attention_maps(q[None], k[None], torch.tensor([1, 4]))[0]  # one image
    probabilities = torch.softmax(torch.einsum("hnd,htd->hnt", q, k) / 8 ** 0.5, dim=-1)
    torch.testing.assert_close(ours, probabilities[:, :, [1, 4]].mean(dim=(0, 2)))


@pytest.mark.parametrize("seed", [0, 1])
def test_non_borrowers_attend_to_themselves_only(seed):
    """Reference mode: references lend their foreground, targets borrow, references borrow nothing."""
    q, k, v = qkv(4, 2, 3, 12, 8, seed=seed)
    g = torch.Generator().manual_seed(seed)
    foreground = torch.zeros(4, 12, dtype=torch.bool)
    foreground[2:] = torch.rand(2, 12, generator=g) < 0.5  # images 2, 3 are references
    borrowers = torch.tensor([True, True, False, False])
    ours = masked_shared_attention(q, k, v, 3, foreground, borrowers)
    torch.testing.assert_close(ours, dense_shared_attention(q, k, v, 3, foreground, borrowers), rtol=1e-5, atol=1e-5)
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(ours[2:], plain[2:], rtol=1e-5, atol=1e-5)
