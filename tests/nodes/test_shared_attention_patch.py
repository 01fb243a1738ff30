"""Masked Shared Attention on ComfyUI's FLUX (tier 2, in-process)."""

import comfy.patcher_extension
import nodes as comfy_nodes
import pytest
import torch

from refcustom.nodes.shared_attention import MaskedSharedAttentionNode
from refcustom.nodes.shared_attention_patch import SHARED_ATTENTION_KEY, SharedAttentionSettings, SharedAttentionWrapper
from refcustom.tests.nodes.msa_oracle import (
    MaskedSharedAttentionOracle,
    SharedReferenceOracle,
    t5_rows_of,
    token_mask,
)
from refcustom.tests.nodes.test_dreamo_nodes import tiny_sd3

BATCH = 3
SIZE = 48  # 6x6 latent -> 3x3 tokens
GRID = (SIZE // 16, SIZE // 16)


def patch(model, mask, full_shared_steps=0, dilation=1, patch_negative=False, **words):
    return MaskedSharedAttentionNode.execute(model, dilation, full_shared_steps, patch_negative, mask=mask,
                                             **words).args[0]


def with_kernel(model, mask, kernel, **settings):
    patched = model.clone()
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, SHARED_ATTENTION_KEY,
                                 SharedAttentionWrapper(SharedAttentionSettings(masks=mask, kernel=kernel, **settings)))
    return patched


def by_definition(model, mask, dilation=1, full_shared_steps=0, patch_negative=False):
    """The independent oracle (tests/nodes/msa_oracle.py): MSA from the paper, no code of the pack."""
    return MaskedSharedAttentionOracle(GRID, token_mask(mask, GRID, dilation), full_shared_steps,
                                       patch_negative).install(model)


def sample(model, clip, cfg=1.0, steps=3):
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a red toy robot"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = {"samples": torch.zeros(BATCH, 16, SIZE // 8, SIZE // 8)}
    (out,) = comfy_nodes.common_ksampler(model, 5, steps, cfg, "euler", "simple", positive, negative, latent)
    return out["samples"]


def masks(value=None):
    if value is not None:
        return torch.full((BATCH, SIZE, SIZE), value)
    m = torch.zeros(BATCH, SIZE, SIZE)
    m[:, 8:40, 8:30] = 1.0
    return m


def test_background_only_masks_equal_the_unpatched_model(tiny_flux, tiny_clip):
    plain = sample(tiny_flux, tiny_clip)
    patched = sample(patch(tiny_flux, masks(0.0)), tiny_clip)
    assert torch.equal(plain, patched)


def test_full_masks_equal_unmasked_shared_attention_by_definition(tiny_flux, tiny_clip):
    gathered = sample(patch(tiny_flux, masks(1.0)), tiny_clip)
    # The paper's definition: one sequence of all images with the dense -inf bias.
    torch.testing.assert_close(gathered, sample(by_definition(tiny_flux, masks(1.0)), tiny_clip), rtol=1e-5, atol=1e-5)
    # Full sharing in the first steps is the same thing as full masks.
    first_steps = sample(patch(tiny_flux, masks(0.0), full_shared_steps=100), tiny_clip)
    torch.testing.assert_close(first_steps, gathered, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(gathered, sample(tiny_flux, tiny_clip))


def test_partial_masks_match_the_dense_definition(tiny_flux, tiny_clip):
    gathered = sample(patch(tiny_flux, masks(), full_shared_steps=1), tiny_clip, cfg=2.0)
    dense = sample(by_definition(tiny_flux, masks(), full_shared_steps=1), tiny_clip, cfg=2.0)
    torch.testing.assert_close(gathered, dense, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(gathered).all()


def test_dilation_matches_the_dense_definition(tiny_flux, tiny_clip):
    m = torch.zeros(BATCH, SIZE, SIZE)
    m[0, 2:10, 2:10] = 1.0  # one corner token each: dilated 3x3, a 2x2 corner of the 3x3 grid
    m[1, 40:46, 40:46] = 1.0
    m[2, 0:6, 42:48] = 1.0
    gathered = sample(patch(tiny_flux, m, dilation=3), tiny_clip)
    torch.testing.assert_close(gathered, sample(by_definition(tiny_flux, m, dilation=3), tiny_clip),
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(gathered, sample(by_definition(tiny_flux, m, dilation=1), tiny_clip), rtol=1e-4, atol=1e-4)


def test_unpatched_runs_before_and_after_are_bit_identical(tiny_flux, tiny_clip):
    before = sample(tiny_flux, tiny_clip)
    sample(patch(tiny_flux, masks(), full_shared_steps=1), tiny_clip, cfg=2.0)
    assert torch.equal(before, sample(tiny_flux, tiny_clip))


def test_mask_count_and_model_errors(tiny_flux, tiny_clip):
    with pytest.raises(ValueError, match="2 masks for a batch of 3 images"):
        sample(patch(tiny_flux, masks()[:2]), tiny_clip)
    with pytest.raises(TypeError, match="Masked Shared Attention needs a FLUX.1 model"):
        patch(tiny_sd3(), masks())
    with pytest.raises(ValueError, match="dilation must be odd"):
        patch(tiny_flux, masks(), dilation=4)


def test_an_empty_mask_shares_nothing_and_stays_finite(tiny_flux, tiny_clip, caplog):
    m = masks()
    m[1] = 0.0
    gathered = sample(patch(tiny_flux, m), tiny_clip)
    dense = sample(by_definition(tiny_flux, m), tiny_clip)
    assert torch.isfinite(gathered).all()
    torch.testing.assert_close(gathered, dense, rtol=1e-5, atol=1e-5)
    assert "masks of images [1] are empty" in caplog.text


def test_canvas_offsets_leave_each_images_own_attention_unchanged(tiny_flux, tiny_clip):
    """Offset ids + a kernel that shares nothing must give the unpatched result: RoPE is relative."""

    def own_tokens_only(q, k, v, text_tokens, foreground):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    shifted = sample(with_kernel(tiny_flux, masks(1.0), own_tokens_only, dilation=1, full_shared_steps=0), tiny_clip)
    torch.testing.assert_close(shifted, sample(tiny_flux, tiny_clip), rtol=1e-4, atol=1e-4)


def test_canvas_offset_patch_moves_image_j_down_by_j_heights():
    from refcustom.nodes.shared_attention_patch import CanvasOffsetPatch

    img_ids = torch.zeros(4, 6, 3)
    img_ids[..., 1] = torch.tensor([0, 0, 1, 1, 2, 2], dtype=torch.float32)
    txt_ids = torch.zeros(4, 2, 3)
    out = CanvasOffsetPatch.for_chunks(images_per_chunk=2, shared_chunks=(True, False))(
        {"img": None, "txt": None, "img_ids": img_ids, "txt_ids": txt_ids})
    rows = out["img_ids"][..., 1]
    assert rows[0].tolist() == [0, 0, 1, 1, 2, 2]
    assert rows[1].tolist() == [3, 3, 4, 4, 5, 5]  # image 1 of the shared chunk, 3 rows lower
    assert rows[3].tolist() == [0, 0, 1, 1, 2, 2]  # the unshared chunk is untouched
    assert out["txt_ids"][1, :, 1].tolist() == [3, 3] and out["txt_ids"][3, :, 1].tolist() == [0, 0]
    assert torch.equal(img_ids[1, :, 1], torch.tensor([0, 0, 1, 1, 2, 2], dtype=torch.float32))  # input untouched


def test_works_with_dreamo_references_which_are_never_shared(tiny_flux, tiny_clip, tiny_vae, models_dir):
    from refcustom.nodes.dreamo_reference import DreamOReferenceNode
    from refcustom.tests.nodes.dreamo_loading import load_dreamo

    dreamo, _ = load_dreamo(tiny_flux)
    prompt = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize("a toy from [ref#1]"))
    positive, _ = DreamOReferenceNode.execute(prompt, tiny_vae, torch.rand(1, 64, 64, 3), "ip", 64, 0, None).args
    negative = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize(""))
    latent = {"samples": torch.zeros(BATCH, 16, SIZE // 8, SIZE // 8)}

    def run(model):
        (out,) = comfy_nodes.common_ksampler(model, 5, 3, 1.0, "euler", "simple", positive, negative, latent)
        return out["samples"]

    gathered = run(patch(dreamo, masks(), full_shared_steps=1))
    dense = run(by_definition(dreamo, masks(), full_shared_steps=1))
    assert torch.isfinite(gathered).all()
    torch.testing.assert_close(gathered, dense, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(gathered, run(dreamo))


def test_every_chunk_runs_through_comfyuis_attention_and_earlier_overrides(tiny_flux, tiny_clip):
    """A user's kernel choice (or another pack's override installed before ours) applies to the shared chunk
    too: its text queries in one call, each image's queries over its own + borrowed keys in one call each."""
    calls = []

    def earlier(func, q, k, v, heads, *args, **kwargs):
        calls.append((q.shape[0], q.shape[2], k.shape[2]))
        return func(q, k, v, heads, *args, **kwargs)

    model = tiny_flux.clone()
    model.model_options["transformer_options"]["optimized_attention_override"] = earlier
    plain = sample(model, tiny_clip, cfg=2.0, steps=1)
    length = calls[0][1]
    assert calls and all(c == (2 * BATCH, length, length) for c in calls)  # cond and uncond batched in one call
    blocks = len(calls)
    calls.clear()
    m = masks()
    shared = sample(patch(model, m, full_shared_steps=0), tiny_clip, cfg=2.0, steps=1)
    text = length - GRID[0] * GRID[1]
    lent = token_mask(m, GRID).sum(dim=1).tolist()  # the oracle's token masks (OpenCV), dilation 1
    borrowed = [length + sum(lent) - lent[i] for i in range(BATCH)]
    per_block = [(BATCH, length, length),                                   # the unshared uncond chunk
                 (BATCH, text, length)]                                      # shared chunk: text queries, own keys
    per_block += [(1, length - text, borrowed[i]) for i in range(BATCH)]    # image queries, own + borrowed keys
    assert sorted(calls) == sorted(per_block * blocks)
    assert torch.isfinite(shared).all() and not torch.allclose(plain, shared)


def test_a_custom_attention_function_changes_the_shared_chunk(tiny_flux, tiny_clip):
    """The override is really used for the shared chunk's output, not only called: an attention function
    that scales its output changes the shared result exactly as it changes the oracle's."""
    def halved(func, *args, **kwargs):
        return func(*args, **kwargs) * 0.5

    model = tiny_flux.clone()
    model.model_options["transformer_options"]["optimized_attention_override"] = halved
    ours = sample(patch(model, masks(), full_shared_steps=0), tiny_clip, steps=2)
    assert not torch.allclose(ours, sample(patch(tiny_flux, masks(), full_shared_steps=0), tiny_clip, steps=2))

    def halved_oracle(model):  # the oracle computes attention itself; halve its output the same way
        oracle = MaskedSharedAttentionOracle(GRID, token_mask(masks(), GRID))
        patched = oracle.install(model)
        definition = patched.model_options["transformer_options"]["optimized_attention_override"]
        patched.model_options["transformer_options"]["optimized_attention_override"] = (
            lambda *args, **kwargs: definition(*args, **kwargs) * 0.5)
        return patched

    torch.testing.assert_close(ours, sample(halved_oracle(tiny_flux), tiny_clip, steps=2), rtol=1e-5, atol=1e-5)


def test_without_a_mask_the_subject_words_attention_drives_sharing(tiny_flux, tiny_clip):
    words = {"clip": tiny_clip, "prompt": "a red toy robot", "subject_words": "robot"}
    gathered = sample(patch(tiny_flux, None, full_shared_steps=1, **words), tiny_clip)
    dense = sample(estimated_by_definition(tiny_flux, tiny_clip, full_shared_steps=1), tiny_clip)
    assert torch.isfinite(gathered).all()
    torch.testing.assert_close(gathered, dense, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(gathered, sample(tiny_flux, tiny_clip))
    # From the first step on, only the estimated foreground is shared: still a change, still the definition.
    estimated = sample(patch(tiny_flux, None, full_shared_steps=0, **words), tiny_clip)
    assert not torch.allclose(estimated, sample(tiny_flux, tiny_clip))
    dense_estimated = sample(estimated_by_definition(tiny_flux, tiny_clip, full_shared_steps=0), tiny_clip)
    torch.testing.assert_close(estimated, dense_estimated, rtol=1e-5, atol=1e-5)


def estimated_by_definition(model, clip, full_shared_steps):
    words = t5_rows_of(clip, "a red toy robot", "robot")  # the oracle's own lookup
    return MaskedSharedAttentionOracle(GRID, None, full_shared_steps, word_positions=words).install(model)


def test_subject_word_positions_and_errors(tiny_clip):
    from refcustom.nodes.shared_attention import subject_word_positions

    ids = [t for t, _ in tiny_clip.tokenize("a red toy robot")["t5xxl"][0]]
    positions = subject_word_positions(tiny_clip, "a red toy robot", "robot, red")
    robot = [t for t, _ in tiny_clip.tokenize("robot")["t5xxl"][0] if t not in (0, 1)]
    assert [ids[p] for p in positions if ids[p] in robot] == robot
    with pytest.raises(ValueError, match="'cat' is not in the prompt"):
        subject_word_positions(tiny_clip, "a red toy robot", "cat")
    with pytest.raises(ValueError, match="needs clip, prompt and subject_words"):
        subject_word_positions(tiny_clip, "a red toy robot", "")



def reference_images():
    # On the uint8 grid (k / 255), as LoadImage gives them: the node encodes its references from uint8.
    return torch.randint(0, 256, (2, SIZE, SIZE, 3), generator=torch.Generator().manual_seed(9)).float() / 255.0


def reference_patch(model, vae, reference_mask=None, full_shared_steps=0):
    from refcustom.nodes.shared_attention import SharedAttentionReferenceNode

    return SharedAttentionReferenceNode.execute(model, vae, reference_images(), 1, full_shared_steps, False, 3,
                                                reference_mask=reference_mask).args[0]


def reference_by_definition(model, vae, reference_mask, full_shared_steps=0):
    latents = SharedReferenceOracle.encode(model, vae, reference_images())
    return SharedReferenceOracle(GRID, latents, token_mask(reference_mask, GRID), full_shared_steps,
                                 noise_seed=3).install(model)


def test_reference_mode_matches_the_dense_definition(tiny_flux, tiny_clip, tiny_vae):
    reference_masks = torch.zeros(2, SIZE, SIZE)
    reference_masks[:, 8:40, 8:40] = 1.0
    gathered = sample(reference_patch(tiny_flux, tiny_vae, reference_masks, full_shared_steps=1), tiny_clip)
    dense = sample(reference_by_definition(tiny_flux, tiny_vae, reference_masks, full_shared_steps=1), tiny_clip)
    assert torch.isfinite(gathered).all()
    torch.testing.assert_close(gathered, dense, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(gathered, sample(tiny_flux, tiny_clip))
    # the references' noise is fresh per step but seeded: the same run twice is identical
    again = sample(reference_patch(tiny_flux, tiny_vae, reference_masks, full_shared_steps=1), tiny_clip)
    assert torch.equal(gathered, again)


def test_reference_mode_with_cfg_runs_the_references_with_the_positive_prompt(tiny_flux, tiny_clip, tiny_vae):
    reference_masks = torch.zeros(2, SIZE, SIZE)
    reference_masks[:, 8:40, 8:40] = 1.0
    gathered = sample(reference_patch(tiny_flux, tiny_vae, reference_masks, full_shared_steps=1), tiny_clip, cfg=2.0)
    dense = sample(reference_by_definition(tiny_flux, tiny_vae, reference_masks, full_shared_steps=1), tiny_clip,
                   cfg=2.0)
    torch.testing.assert_close(gathered, dense, rtol=1e-5, atol=1e-5)


def test_reference_mode_with_background_only_masks_is_the_unpatched_model(tiny_flux, tiny_clip, tiny_vae):
    plain = sample(tiny_flux, tiny_clip)
    assert torch.equal(plain, sample(reference_patch(tiny_flux, tiny_vae, torch.zeros(2, SIZE, SIZE)), tiny_clip))


def test_reference_mode_errors(tiny_flux, tiny_vae):
    from refcustom.nodes.shared_attention import SharedAttentionReferenceNode

    reference = torch.rand(2, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="1 reference masks for 2 reference images"):
        SharedAttentionReferenceNode.execute(tiny_flux, tiny_vae, reference, 1, 0, False, 0,
                                             reference_mask=torch.ones(1, SIZE, SIZE))
    with pytest.raises(ValueError, match="the reference mask is 16x16"):
        SharedAttentionReferenceNode.execute(tiny_flux, tiny_vae, reference, 1, 0, False, 0,
                                             reference_mask=torch.ones(2, 16, 16))
    with pytest.raises(TypeError, match="needs a FLUX.1 model"):
        SharedAttentionReferenceNode.execute(tiny_sd3(), tiny_vae, reference, 1, 0, False, 0)


def test_patch_negative_shares_in_the_uncond_branch_too(tiny_flux, tiny_clip):
    cond_only = sample(patch(tiny_flux, masks(), full_shared_steps=1), tiny_clip, cfg=2.0)
    both = sample(patch(tiny_flux, masks(), full_shared_steps=1, patch_negative=True), tiny_clip, cfg=2.0)
    dense_both = sample(by_definition(tiny_flux, masks(), full_shared_steps=1, patch_negative=True), tiny_clip, cfg=2.0)
    assert not torch.allclose(cond_only, both)
    torch.testing.assert_close(both, dense_both, rtol=1e-5, atol=1e-5)



def test_a_sigma_range_selects_the_full_sharing_steps(tiny_flux, tiny_clip):
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(tiny_flux.get_model_object("model_sampling"), "simple", 3)
    between = float(sigmas[1] + sigmas[2]) / 2  # the first two steps are at or above it, the third below
    by_sigma = sample(MaskedSharedAttentionNode.execute(tiny_flux, 1, 0, False, mask=masks(0.0),
                                                        full_shared_above_sigma=between).args[0], tiny_clip)
    by_steps = sample(patch(tiny_flux, masks(0.0), full_shared_steps=2), tiny_clip)
    torch.testing.assert_close(by_sigma, by_steps, rtol=0, atol=0)
    assert not torch.equal(by_steps, sample(patch(tiny_flux, masks(0.0), full_shared_steps=1), tiny_clip))
