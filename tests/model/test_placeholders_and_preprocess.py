"""Prompt placeholders and per-task reference preprocessing (tier 1)."""

import math
import re

import pytest
import torch

from refcustom.model.placeholders import reference_indices_named, split_prompt
from refcustom.model.reference_preprocess import area_resize_size, prepare_reference


def test_split_prompt_maps_placeholders_to_table_rows():
    assert split_prompt("a woman from [ref#1] and a dog from [ref#2], [res]") == [
        "a woman from ", 0, " and a dog from ", 1, ", ", 9,
    ]
    assert split_prompt("no placeholders") == ["no placeholders"]
    assert split_prompt("[ref#9]") == [8]


@pytest.mark.parametrize("bad", ["[ref#]", "[ref#0]", "[ref#10]", "[ref#a]", "[REF# ]", "[REF#1]", "[RES]", "[Res]"])
def test_malformed_placeholders_are_errors(bad):
    with pytest.raises(ValueError, match="not valid"):
        split_prompt(f"a cat from {bad}")


@pytest.mark.parametrize("written,fix", [("[REF#1]", "[ref#1]"), ("[RES]", "[res]"), ("[ ref#3 ]", "[ref#3]")])
def test_wrong_case_or_spacing_names_the_lower_case_placeholder(written, fix):
    with pytest.raises(ValueError, match=re.escape(f"lower case: write {fix}")):
        split_prompt(f"a cat from {written}")


def test_reference_indices_named_leaves_out_res():
    assert reference_indices_named("a [ref#3] and [ref#1], [res] [ref#3]") == {1, 3}
    assert reference_indices_named("plain") == frozenset()


@pytest.mark.parametrize("h,w,res", [(1000, 750, 512), (333, 777, 512), (512, 512, 768), (64, 2000, 512)])
def test_area_resize_matches_the_official_formula(h, w, res):
    k = math.sqrt(res * res / (h * w))
    expected = (int(h * k) // 16 * 16, int(w * k) // 16 * 16)
    if min(expected) < 16:
        with pytest.raises(ValueError, match="too narrow"):
            area_resize_size(h, w, res)
    else:
        assert area_resize_size(h, w, res) == expected


def test_mask_whitens_background_and_sizes_are_multiples_of_16():
    image = torch.rand(2, 100, 80, 3) * 0.5
    mask = torch.zeros(1, 100, 80)
    mask[:, 20:80, 20:60] = 1.0
    out = prepare_reference(image, "ip", 64, mask)
    assert out.shape[1] % 16 == 0 and out.shape[2] % 16 == 0 and out.shape[0] == 2
    assert torch.allclose(out[:, 0, 0], torch.ones(2, 3))  # a background corner turned white
    same = prepare_reference(torch.rand(1, 64, 64, 3), "style", 64)
    assert same.shape == (1, 64, 64, 3)


def test_id_task_gives_a_512_square():
    assert prepare_reference(torch.rand(1, 300, 200, 3), "id", 768).shape == (1, 512, 512, 3)


def test_bad_masks_and_sizes_are_clear_errors():
    image = torch.rand(1, 64, 64, 3)
    with pytest.raises(ValueError, match="MASK is 32x64 but its reference image is 64x64"):
        prepare_reference(image, "ip", 64, torch.ones(1, 64, 32))
    with pytest.raises(ValueError, match="MASK is empty"):
        prepare_reference(image, "ip", 64, torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="style references take no MASK"):
        prepare_reference(image, "style", 64, torch.ones(1, 64, 64))
    with pytest.raises(ValueError, match="at least 16 px"):
        prepare_reference(torch.rand(1, 9, 7, 3), "ip", 64)
    with pytest.raises(ValueError, match="unknown DreamO task"):
        prepare_reference(image, "face", 64)
