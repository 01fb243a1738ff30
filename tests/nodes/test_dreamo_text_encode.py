"""DreamO Text Encode against the official pipeline's T5 input (tier 2, in-process).

Oracle: the ids the official pipeline feeds T5, recorded with its pinned transformers 4.45.2 from
ComfyUI's own T5 tokenizer files plus the ten added tokens (tests/fixtures/dreamo_t5_oracle.py; the
table is recomputed live when the host has a 4.x transformers). The T5 output oracle is ComfyUI's T5
run on those ids with the placeholder rows written into its input-embedding table, which is what the
official `_prepare_t5` does, and shares nothing with the node's token splicing.
"""

import json
import logging
import re

import comfy.samplers
import nodes as comfy_nodes
import pytest
import torch

from refcustom.model.dreamo_conditioning import DreamOReference, DreamOReferenceSet
from refcustom.nodes.conditioning_edit import with_prompt_replaced, without_references
from refcustom.nodes.dreamo_patch import PLACEHOLDER_COND_KEY, require_named_references
from refcustom.nodes.dreamo_reference import DreamOReferenceNode
from refcustom.nodes.dreamo_text import DreamOTextEncode, official_t5_tokens
from refcustom.nodes.true_cfg_guider import TrueCFGGuiderNode
from refcustom.tests.fixtures import dreamo_t5_oracle
from refcustom.tests.nodes.dreamo_loading import load_dreamo

ORACLE = json.loads(dreamo_t5_oracle.TABLE.read_text(encoding="utf-8"))
PROMPTS = ORACLE["prompts"]
FIRST_PLACEHOLDER_ID = ORACLE["first_placeholder_id"]  # 32100: right after T5-XXL's 32100-token vocabulary
LONG_PROMPT = PROMPTS[-1]


def oracle_ids(prompt: str, length: int) -> list[int]:
    return ORACLE["ids"][str(length)][PROMPTS.index(prompt)]


def test_the_recorded_oracle_is_what_transformers_4_computes(comfy_root):
    """When the host has a transformers 4.x (the official pin's line), recompute the table live."""
    transformers = pytest.importorskip("transformers")
    assert ORACLE["prompts"] == dreamo_t5_oracle.PROMPTS and len(PROMPTS) >= 20
    if int(transformers.__version__.split(".")[0]) >= 5:
        # transformers 5 tokenizes around added tokens differently from the official 4.45.2; check that the
        # table still states the official behaviour this file relies on: a lone '▁' (id 3) before a
        # placeholder that follows a space, and no '▁' on a word glued after one.
        ids = oracle_ids("a toy [ref#2]in the garden", 512)
        at = ids.index(FIRST_PLACEHOLDER_ID + 1)
        assert ids[at - 1] == 3 and ids[at + 1] == 77  # 77 = 'in' without '▁' (' in' is 16)
        return
    live = dreamo_t5_oracle.record(str(comfy_root / "comfy" / "text_encoders" / "t5_tokenizer"))
    assert live["ids"] == ORACLE["ids"]


@pytest.fixture
def placeholder_table():
    # Ten distinct rows, so each spliced vector maps back to exactly one placeholder id.
    return torch.randn(10, 32, generator=torch.Generator().manual_seed(3))


def ids_of(tokens: list, table: torch.Tensor) -> list[int]:
    ids = []
    for token, weight in tokens:
        assert weight == 1.0
        if hasattr(token, "shape"):
            (row,) = [r for r in range(table.shape[0]) if torch.equal(token, table[r])]
            ids.append(FIRST_PLACEHOLDER_ID + row)
        else:
            ids.append(int(token))
    return ids


@pytest.mark.parametrize("length", [512, 256])
@pytest.mark.parametrize("prompt", PROMPTS, ids=[f"p{i}" for i in range(len(PROMPTS))])
def test_t5_ids_equal_the_official_pipeline(tiny_clip, placeholder_table, prompt, length):
    tokens = official_t5_tokens(tiny_clip, prompt, placeholder_table, length)
    assert len(tokens) == length
    assert ids_of(tokens, placeholder_table) == oracle_ids(prompt, length)


def encode_oracle_ids(clip, text: str, ids: list[int], table: torch.Tensor):
    """ComfyUI's T5 on the official ids, its embedding rows 32100.. overwritten as `_prepare_t5` does."""
    tokens = clip.tokenize(text)
    tokens["t5xxl"] = [[(i, 1.0) for i in ids]]
    embedding = clip.cond_stage_model.t5xxl.transformer.get_input_embeddings().weight
    rows = slice(FIRST_PLACEHOLDER_ID, FIRST_PLACEHOLDER_ID + table.shape[0])
    saved = embedding[rows].clone()
    with torch.no_grad():
        embedding[rows] = table.to(embedding)
    try:
        return clip.encode_from_tokens_scheduled(tokens)
    finally:
        with torch.no_grad():
            embedding[rows] = saved


@pytest.mark.parametrize("length", [512, 256])
@pytest.mark.parametrize("prompt", [
    "a woman from [ref#1] and a man from [ref#2] walking in the park",
    "a toy [ref#2]in the garden",
    "line one\n[ref#1] line two\n\nend",
    "no placeholders at all, just plain text.",
    LONG_PROMPT,
], ids=["two", "glued", "newlines", "plain", "long"])
def test_node_output_equals_t5_on_the_official_ids(tiny_clip, tiny_flux, models_dir, prompt, length):
    _, dreamo = load_dreamo(tiny_flux)
    table = dreamo.tables.placeholders
    (ours,) = DreamOTextEncode.execute(tiny_clip, dreamo, prompt, length).args
    expected = encode_oracle_ids(tiny_clip, prompt, oracle_ids(prompt, length), table)
    assert ours[0][0].shape == expected[0][0].shape == (1, length, 32)
    torch.testing.assert_close(ours[0][0], expected[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[0][1]["pooled_output"], expected[0][1]["pooled_output"])


def test_default_length_is_the_official_512_and_256_equals_clip_text_encode(tiny_clip, tiny_flux, models_dir):
    _, dreamo = load_dreamo(tiny_flux)
    (default,) = DreamOTextEncode.execute(tiny_clip, dreamo, "a plain prompt").args
    assert default[0][0].shape[1] == 512
    (short,) = DreamOTextEncode.execute(tiny_clip, dreamo, "a plain prompt", 256).args
    core = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize("a plain prompt"))
    torch.testing.assert_close(short[0][0], core[0][0], rtol=0, atol=0)


def test_a_prompt_longer_than_t5_length_is_cut_with_a_warning(tiny_clip, tiny_flux, models_dir, caplog):
    _, dreamo = load_dreamo(tiny_flux)
    with caplog.at_level(logging.WARNING):
        (cut,) = DreamOTextEncode.execute(tiny_clip, dreamo, LONG_PROMPT, 512).args
    assert cut[0][0].shape[1] == 512
    assert "cut to 512" in caplog.text


def test_weights_reach_placeholder_tokens(tiny_clip, placeholder_table):
    tokens = official_t5_tokens(tiny_clip, "(a toy [ref#1]:1.2) on grass", placeholder_table, 64)
    weighted = [(t, w) for t, w in tokens if hasattr(t, "shape")]
    assert len(weighted) == 1 and weighted[0][1] == pytest.approx(1.2)
    assert torch.equal(weighted[0][0], placeholder_table[0])


@pytest.mark.parametrize("written,hint", [
    ("[REF#1]", "write [ref#1]"), ("[RES]", "write [res]"), ("[Ref#2]", "write [ref#2]"),
    ("[ref #1]", "write [ref#1]"), ("[ref#0]", "not valid"), ("[ref#10]", "not valid"),
])
def test_one_casing_rule_for_both_forms(tiny_clip, tiny_flux, models_dir, written, hint):
    _, dreamo = load_dreamo(tiny_flux)
    with pytest.raises(ValueError, match=re.escape(f"placeholder '{written}' is not valid")) as error:
        DreamOTextEncode.execute(tiny_clip, dreamo, f"a cat from {written}")
    assert hint in str(error.value)


# ---- the placeholder names a reference: checked when sampling ----

def sample(model, positive, negative, cfg=1.0):
    latent = {"samples": torch.zeros(1, 16, 4, 4)}
    (out,) = comfy_nodes.common_ksampler(model, 7, 2, cfg, "euler", "simple", positive, negative, latent)
    return out["samples"]


@pytest.fixture
def reference_image():
    return torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(1))


def with_reference(conditioning, vae, image, index=0):
    return DreamOReferenceNode.execute(conditioning, vae, image, "ip", 64, index, None).args[0]


def test_a_placeholder_without_its_reference_is_an_error_naming_the_fix(
        tiny_flux, tiny_clip, tiny_vae, models_dir, reference_image):
    model, dreamo = load_dreamo(tiny_flux)
    negative = DreamOTextEncode.execute(tiny_clip, dreamo, "", 256).args[0]

    (named_nine,) = DreamOTextEncode.execute(tiny_clip, dreamo, "a toy from [ref#9]", 256).args
    with pytest.raises(ValueError, match=r"names \[ref#9\].*indices present: 1.*DreamO Reference"):
        sample(model, with_reference(named_nine, tiny_vae, reference_image), negative)

    (named_one,) = DreamOTextEncode.execute(tiny_clip, dreamo, "a toy from [ref#1]", 256).args
    with pytest.raises(ValueError, match=r"names \[ref#1\].*indices present: none"):
        sample(model, named_one, negative)  # the reference node was forgotten

    assert torch.isfinite(sample(model, with_reference(named_one, tiny_vae, reference_image), negative)).all()
    assert torch.isfinite(sample(model, with_reference(named_nine, tiny_vae, reference_image, index=9), negative)).all()
    # The negative branch never carries references (DreamO's true negative), so it is not checked.
    (negative_named,) = DreamOTextEncode.execute(tiny_clip, dreamo, "a blurry [ref#1]", 256).args
    positive = with_reference(named_one, tiny_vae, reference_image)
    assert torch.isfinite(sample(model, positive, negative_named, cfg=2.0)).all()


def test_the_check_runs_on_models_sampled_by_core_guiders(tiny_flux, tiny_clip, tiny_vae, models_dir, reference_image):
    """Same rule through SamplerCustomAdvanced's CFGGuider, not only KSampler."""
    model, dreamo = load_dreamo(tiny_flux)
    (named,) = DreamOTextEncode.execute(tiny_clip, dreamo, "a toy from [ref#3]", 256).args
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(with_reference(named, tiny_vae, reference_image), named)
    guider.set_cfg(1.0)
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"names \[ref#3\]"):
        guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"),
                      torch.tensor([1.0, 0.0]), seed=0)


def test_the_rule_holds_in_any_branch_order_and_for_the_true_negative(
        tiny_flux, tiny_clip, tiny_vae, models_dir, reference_image):
    """Guiders order their branches as they like (the normalized guider puts the negative first), so a
    pass with references is checked whatever its place; branches built without references or with a
    neutral prompt no longer name any reference."""
    one_reference = DreamOReferenceSet((DreamOReference(index=1, slot=0),))
    with pytest.raises(ValueError, match=r"names \[ref#9\]"):
        require_named_references(frozenset({9}), one_reference, {"cond_or_uncond": [2]})
    require_named_references(frozenset({1}), one_reference, {"cond_or_uncond": [2]})
    require_named_references(frozenset({1}), None, {"cond_or_uncond": [1]})  # a negative prompt

    model, dreamo = load_dreamo(tiny_flux)
    (named,) = DreamOTextEncode.execute(tiny_clip, dreamo, "a toy from [ref#1]", 256).args
    positive = with_reference(named, tiny_vae, reference_image)
    assert PLACEHOLDER_COND_KEY in positive[0][1]["model_conds"]
    assert PLACEHOLDER_COND_KEY not in without_references(positive)[0][1]["model_conds"]
    neutral = DreamOTextEncode.execute(tiny_clip, dreamo, "a toy", 256).args[0]
    assert PLACEHOLDER_COND_KEY not in with_prompt_replaced(positive, neutral)[0][1]["model_conds"]

    # DreamO True CFG Guider strips the negative's references; the negative (the positive itself, as a
    # Kontext-style graph might wire it) then names [ref#1] with no reference, and must still run.
    (guider,) = TrueCFGGuiderNode.execute(model, positive, positive, 2.0, 0, 10000, 0.0).args
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    out = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"),
                        torch.tensor([1.0, 0.5, 0.0]), seed=0)
    assert torch.isfinite(out).all()
