"""DreamO embedding arithmetic and the diagonal layout (tier 1)."""

import pytest
import torch

from refcustom.model.dreamo_conditioning import (
    MAX_REFERENCES,
    DreamOConditionEmbedding,
    DreamOReference,
    DreamOReferenceSet,
    TokenLayout,
    diagonal_position_ids,
    tokens_for_latent,
)


def test_diagonal_ids_match_the_official_pipeline_example():
    # shared/notes/dreamo-reference.md section 3: 4x4 noise, ref1 2x3 -> rows 4-5 cols 4-6, ref2 3x2 -> rows 6-8 cols 7-8.
    ids = diagonal_position_ids((4, 4), [(2, 3), (3, 2)])
    assert ids.shape == (16 + 6 + 6, 3)
    assert torch.all(ids[:, 0] == 0)
    noise, ref1, ref2 = ids[:16], ids[16:22], ids[22:]
    assert noise[:, 1].tolist() == [r for r in range(4) for _ in range(4)]
    assert noise[:, 2].tolist() == [c for _ in range(4) for c in range(4)]
    assert sorted(set(ref1[:, 1].tolist())) == [4, 5] and sorted(set(ref1[:, 2].tolist())) == [4, 5, 6]
    assert sorted(set(ref2[:, 1].tolist())) == [6, 7, 8] and sorted(set(ref2[:, 2].tolist())) == [7, 8]
    assert ref2[:, 1:].tolist() == [[r, c] for r in (6, 7, 8) for c in (7, 8)]


def test_embedding_rows_per_token_match_a_token_by_token_loop():
    torch.manual_seed(0)
    module = DreamOConditionEmbedding(8)
    torch.nn.init.normal_(module.task_embedding.weight)
    torch.nn.init.normal_(module.idx_embedding.weight)
    layout = TokenLayout(noise_tokens=5, reference_tokens=(3, 2, 4), reference_indices=(2, None, 1))
    img = torch.randn(2, layout.total_tokens, 8)
    out = module(img, layout)

    task, idx = module.task_embedding.weight, module.idx_embedding.weight
    expected = img.clone()
    owner = [("noise", None)] * 5 + [("ref", 2)] * 3 + [("other", None)] * 2 + [("ref", 1)] * 4
    for t, (kind, k) in enumerate(owner):
        if kind == "noise":
            expected[:, t] += task[1]
        elif kind == "ref":
            expected[:, t] += task[0] + idx[k]
    torch.testing.assert_close(out, expected)


def test_embedding_is_added_in_the_token_dtype():
    module = DreamOConditionEmbedding(4)
    layout = TokenLayout(noise_tokens=2)
    img = torch.zeros(1, 2, 4, dtype=torch.bfloat16)
    assert module(img, layout).dtype == torch.bfloat16


def test_token_count_mismatch_is_a_clear_error():
    module = DreamOConditionEmbedding(4)
    with pytest.raises(ValueError, match="expected 6 image tokens"):
        module(torch.zeros(1, 5, 4), TokenLayout(noise_tokens=4, reference_tokens=(2,), reference_indices=(1,)))
    with pytest.raises(ValueError, match="hidden size is 8"):
        module(torch.zeros(1, 4, 8), TokenLayout(noise_tokens=4))


def test_tokens_for_latent_pads_odd_sizes_like_flux():
    assert tokens_for_latent(128, 128) == 4096
    assert tokens_for_latent(125, 64) == 63 * 32


def test_reference_set_limits_and_indices():
    refs = DreamOReferenceSet()
    for slot in range(MAX_REFERENCES):
        refs = refs.added(DreamOReference(index=refs.next_index(), slot=slot))
    assert [r.index for r in refs.references] == list(range(1, 10))
    with pytest.raises(ValueError, match="already has 9 DreamO references"):
        refs.next_index()
    with pytest.raises(ValueError, match="at most 9 references"):
        refs.added(DreamOReference(index=1, slot=9))
    with pytest.raises(ValueError, match="share a DreamO index"):
        DreamOReferenceSet((DreamOReference(1, 0), DreamOReference(1, 1)))
    with pytest.raises(ValueError, match="must be 1..9"):
        DreamOReference(index=10, slot=0)
    explicit = DreamOReferenceSet((DreamOReference(2, 0),))
    assert explicit.next_index() == 1
    assert explicit.index_of_slot(0) == 2 and explicit.index_of_slot(1) is None
