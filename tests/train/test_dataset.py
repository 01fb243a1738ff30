"""train/dataset.py and train/synthetic.py: metadata validation, transforms, batching, the shape metric.

Expected values come from independent computations: pixel slices of the PNGs we draw here, crop boxes
worked out by hand, colour distances in numpy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refcustom.train.dataset import (
    DatasetError,
    ReferenceDataset,
    SampleRecord,
    batch_plan,
    collate,
    load_image,
    read_metadata,
    select_subsets,
)
from refcustom.train.synthetic import PALETTE, shape_metric, write_shapes_dataset

RED = (220, 40, 40)


def _png(path, size, color=(255, 255, 255), mode="RGB", box=None, box_color=None):
    """A flat image of `size` (w, h) with an optional filled rectangle box = (x0, y0, x1, y1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    array = np.empty((size[1], size[0], channels), dtype=np.uint8)
    array[:] = color
    if box is not None:
        x0, y0, x1, y1 = box
        array[y0:y1, x0:x1] = box_color
    Image.fromarray(array if channels == 3 else array[..., 0], mode).save(path)


def _write_meta(folder, lines):
    """Write metadata.jsonl; dict lines are JSON-encoded, str lines written as they are."""
    text = "".join((json.dumps(line) if isinstance(line, dict) else line) + "\n" for line in lines)
    (folder / "metadata.jsonl").write_text(text, encoding="utf-8")


@pytest.fixture
def small_folder(tmp_path):
    _png(tmp_path / "t.png", (32, 32))
    _png(tmp_path / "r1.png", (16, 16))
    _png(tmp_path / "r2.png", (16, 16))
    _png(tmp_path / "m.png", (32, 32), 0, "L")
    _png(tmp_path / "m_small.png", (16, 16), 0, "L")
    return tmp_path


GOOD = {"image": "t.png", "references": ["r1.png", "r2.png"], "prompt": "a [ref#1] and a [ref#2]"}


# ---- synthetic data written and read back -------------------------------------------------------


def test_shapes_dataset_round_trips(tmp_path):
    folder = write_shapes_dataset(tmp_path / "shapes", count=6, seed=3, max_references=3, two_column_every=3)
    records = read_metadata(folder)
    assert len(records) == 6
    assert [r.subset == "two_column" for r in records] == [False, False, True, False, False, True]
    for rec in records:
        shapes = rec.extra["synthetic"]
        assert len(shapes) == len(rec.references) == len(rec.masks)
        assert rec.concepts == (f"{shapes[0]['color']} {shapes[0]['kind']}", shapes[0]["kind"], "shape")
        for k, shape in enumerate(shapes, start=1):
            assert f"a {shape['color']} {shape['kind']} [ref#{k}]" in rec.prompt
            assert tuple(shape["rgb"]) == PALETTE[shape["color"]]
        target = np.asarray(Image.open(rec.image))
        for shape, mask_path, ref_path in zip(shapes, rec.masks, rec.references, strict=True):
            assert mask_path.is_file() and ref_path.is_file()
            mask = np.asarray(Image.open(mask_path)) > 127
            x0, y0, x1, y1 = shape["box"]
            rows, cols = np.nonzero(mask)
            assert rows.min() >= y0 and rows.max() < y1 and cols.min() >= x0 and cols.max() < x1
            if shape["kind"] == "square":
                expected = np.zeros_like(mask)
                expected[y0:y1, x0:x1] = True
                assert (mask == expected).all()
            is_color = (target == shape["rgb"]).all(-1)
            assert (is_color == mask).all()  # exactly the drawn pixels have the shape colour
            ref = np.asarray(Image.open(ref_path))
            assert ref.shape == (32, 32, 3)
            assert tuple(ref[16, 16]) == tuple(shape["rgb"]) and tuple(ref[0, 0]) == (255, 255, 255)
    two_column = records[2]
    assert two_column.prompt.startswith("Generate a two-column image. The left is ")
    left = [s for s in two_column.extra["synthetic"] if s["box"][2] <= 32]
    assert 0 < len(left) < len(two_column.references)


def test_shapes_dataset_is_deterministic(tmp_path):
    a = write_shapes_dataset(tmp_path / "a", count=4, seed=7)
    b = write_shapes_dataset(tmp_path / "b", count=4, seed=7)
    c = write_shapes_dataset(tmp_path / "c", count=4, seed=8)
    text = [(f / "metadata.jsonl").read_text() for f in (a, b, c)]
    assert text[0] == text[1] != text[2]
    assert (np.asarray(Image.open(a / "targets/0002.png")) == np.asarray(Image.open(b / "targets/0002.png"))).all()


# ---- read_metadata errors ------------------------------------------------------------------------


BAD_LINES = {
    "missing file": ({**GOOD, "references": ["r1.png", "nope.png"]}, ["nope.png", "not found"]),
    "more than 9 references": (
        {**GOOD, "references": ["r1.png"] * 10},
        ["10 references", "9 index embeddings", "[ref#9]"],
    ),
    "mask size": ({**GOOD, "masks": ["m.png", "m_small.png"]}, ["16x16", "target image is 32x32"]),
    "masks length": ({**GOOD, "masks": ["m.png"]}, ["one entry per reference (2)", "got 1 entries"]),
    "bad json": ('{"image": "t.png", ', ["not valid JSON"]),
    "not an object": ("[1, 2]", ["expected a JSON object"]),
    "missing prompt": ({"image": "t.png", "references": ["r1.png"]}, ['missing required key "prompt"']),
    "placeholder beyond references": ({**GOOD, "prompt": "a [ref#1] and [ref#3]"}, ["[ref#3]", "2 reference(s)"]),
    "malformed placeholder": ({**GOOD, "prompt": "a [ref#] here"}, ["bad placeholder", "'[ref#]'"]),
    "empty concept": ({**GOOD, "concepts": ["dog", ""]}, ['"concepts" must be a list of non-empty strings']),
    "references not a list": ({**GOOD, "references": "r1.png"}, ['"references" must be a non-empty list']),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_read_metadata_names_the_bad_line(small_folder, case):
    bad, fragments = BAD_LINES[case]
    _write_meta(small_folder, [GOOD, "", {**GOOD, "masks": ["m.png", None]}, "   ", bad, "{not even read"])
    with pytest.raises(DatasetError) as info:
        read_metadata(small_folder)
    message = str(info.value)
    assert message.startswith(f"{small_folder / 'metadata.jsonl'} line 5: ")
    for fragment in fragments:
        assert fragment in message


def test_read_metadata_missing_and_empty_file(tmp_path):
    with pytest.raises(DatasetError, match="metadata.jsonl not found"):
        read_metadata(tmp_path)
    _write_meta(tmp_path, ["", "  "])
    with pytest.raises(DatasetError, match="no samples"):
        read_metadata(tmp_path)


def test_read_metadata_fields(small_folder):
    _write_meta(
        small_folder,
        [
            "",
            {**GOOD, "masks": [None, "m.png"], "concepts": ["dog", "animal"], "subset": "s1", "synthetic": [1]},
            {"image": "t.png", "references": ["r1.png"], "prompt": "no placeholders [res]"},
        ],
    )
    first, second = read_metadata(small_folder)
    assert first.line == 2 and second.line == 3
    assert first.image == small_folder / "t.png"
    assert first.references == (small_folder / "r1.png", small_folder / "r2.png")
    assert first.masks == (None, small_folder / "m.png")
    assert first.concepts == ("dog", "animal") and first.subset == "s1" and first.extra == {"synthetic": [1]}
    assert second.masks is None and second.concepts == () and second.subset is None and second.extra == {}


# ---- ReferenceDataset ----------------------------------------------------------------------------


def test_load_image_keeps_pixels_at_native_size(tmp_path):
    _png(tmp_path / "a.png", (16, 16), (255, 0, 0), box=(4, 4, 8, 8), box_color=(0, 51, 255))
    pixels = load_image(tmp_path / "a.png", 16)
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
    assert torch.equal(pixels[:, 5, 5], torch.tensor([0.0, 0.2, 1.0]))
    assert torch.equal(pixels[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_masks_follow_the_target_resize_and_crop(tmp_path):
    # A 96x64 target, shorter side 64 -> 32: scale 1/2 to 48x32, crop x 8..40 of the resized image,
    # i.e. original x 16..80. The rectangle at original x 40..72, y 16..48 lands at crop x 12..28, y 8..24.
    _png(tmp_path / "t.png", (96, 64), box=(40, 16, 72, 48), box_color=RED)
    _png(tmp_path / "m.png", (96, 64), 0, "L", box=(40, 16, 72, 48), box_color=255)
    _png(tmp_path / "r.png", (40, 20), (0, 0, 255))
    _write_meta(
        tmp_path, [{"image": "t.png", "references": ["r.png", "r.png"], "prompt": "x", "masks": ["m.png", None]}]
    )
    item = ReferenceDataset(read_metadata(tmp_path), resolution=32, reference_resolution=16)[0]

    expected = torch.zeros(32, 32)
    expected[8:24, 12:28] = 1
    assert item["masks"].shape == (2, 32, 32) and item["masks"].dtype == torch.float32
    assert torch.equal(item["masks"][0], expected)
    assert torch.equal(item["masks"][1], torch.zeros(32, 32))
    assert item["mask_valid"].tolist() == [True, False]

    image = item["image"]
    assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1
    red = torch.tensor(RED, dtype=torch.float32) / 127.5 - 1
    inner = image[:, 10:22, 14:26].reshape(3, -1)  # 2 px inside the edges: beyond the bicubic support
    assert torch.allclose(inner, red[:, None].expand_as(inner), atol=1e-4)
    assert torch.allclose(image[:, :, :8], torch.ones(3, 32, 8), atol=1e-4)

    refs = item["references"]
    assert len(refs) == 2 and refs[0].shape == (3, 16, 16)
    assert torch.allclose(refs[0], torch.tensor([-1.0, -1.0, 1.0])[:, None, None].expand(3, 16, 16), atol=1e-4)


def test_dataset_item_without_masks(small_folder):
    _write_meta(small_folder, [GOOD])
    item = ReferenceDataset(read_metadata(small_folder), 32, 16)[0]
    assert torch.equal(item["masks"], torch.zeros(2, 32, 32))
    assert item["mask_valid"].tolist() == [False, False]
    assert item["prompt"] == GOOD["prompt"] and item["index"] == 0 and item["subset"] is None


def test_dataset_on_shapes_and_collate(tmp_path):
    folder = write_shapes_dataset(tmp_path, count=8, seed=0, max_references=2)
    records = read_metadata(folder)
    dataset = ReferenceDataset(records, resolution=32, reference_resolution=16)
    for i, item in enumerate(dataset):
        n = len(records[i].references)
        assert item["image"].shape == (3, 32, 32) and -1 <= item["image"].min() and item["image"].max() <= 1
        assert [r.shape for r in item["references"]] == [(3, 16, 16)] * n
        assert item["masks"].shape == (n, 32, 32) and set(item["masks"].unique().tolist()) <= {0.0, 1.0}
        assert item["mask_valid"].all() and item["masks"].sum((1, 2)).min() > 0
        assert item["index"] == i and item["concepts"] == records[i].concepts

    by_count = {}
    for i, r in enumerate(records):
        by_count.setdefault(len(r.references), []).append(i)
    assert set(by_count) == {1, 2}
    with pytest.raises(ValueError, match="grouped by reference count by batch_plan"):
        collate([dataset[by_count[1][0]], dataset[by_count[2][0]]])
    batch = collate([dataset[i] for i in by_count[2]])
    b = len(by_count[2])
    assert batch["image"].shape == (b, 3, 32, 32)
    assert [r.shape for r in batch["references"]] == [(b, 3, 16, 16)] * 2
    assert batch["masks"].shape == (b, 2, 32, 32) and batch["mask_valid"].shape == (b, 2)
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == by_count[2]
    assert torch.equal(batch["references"][1][0], dataset[by_count[2][0]]["references"][1])
    assert len(batch["prompt"]) == len(batch["concepts"]) == len(batch["subset"]) == b


def test_resolution_must_be_a_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        ReferenceDataset([], resolution=30, reference_resolution=16)


# ---- batching and subsets ------------------------------------------------------------------------


def _records(counts, subsets=None):
    subsets = subsets or [None] * len(counts)
    return [
        SampleRecord(i + 1, Path("t"), tuple(Path(f"r{k}") for k in range(n)), "p", None, (), s)
        for i, (n, s) in enumerate(zip(counts, subsets, strict=True))
    ]


def test_batch_plan():
    counts = [1 + i % 3 for i in range(23)]  # 8 with one reference, 8 with two, 7 with three
    records = _records(counts)
    plan = batch_plan(records, batch_size=3, seed=5, epoch=0)
    assert plan == batch_plan(records, batch_size=3, seed=5, epoch=0)
    assert sorted(i for batch in plan for i in batch) == list(range(23))
    assert all(len({counts[i] for i in batch}) == 1 for batch in plan)
    sizes = sorted(len(b) for b in plan)
    assert len(plan) == 3 + 3 + 3 and sizes == [1, 2, 2] + [3] * 6  # one partial batch per group
    assert plan != batch_plan(records, batch_size=3, seed=5, epoch=1)
    assert plan != batch_plan(records, batch_size=3, seed=6, epoch=0)
    with pytest.raises(ValueError, match="batch_size"):
        batch_plan(records, batch_size=0, seed=0, epoch=0)


def test_select_subsets():
    records = _records([1, 1, 2], ["single", "single", "multi"])
    assert select_subsets(records, None) == records == select_subsets(records, [])
    assert [r.line for r in select_subsets(records, ["multi"])] == [3]
    with pytest.raises(DatasetError, match=r"\['multi', 'single'\]"):
        select_subsets(records, ["stage9"])


# ---- shape_metric --------------------------------------------------------------------------------


def test_shape_metric_scores_the_target_and_a_grey_image(tmp_path):
    folder = write_shapes_dataset(tmp_path, count=4, seed=1, max_references=2)
    records = read_metadata(folder)
    dataset = ReferenceDataset(records, resolution=64, reference_resolution=32)
    for i, rec in enumerate(records):
        target = dataset[i]["image"]
        good = shape_metric(target, rec.extra, 64)
        assert good["color_error"] < 0.02 and good["mask_contrast"] > 0.3

        grey = shape_metric(torch.zeros(3, 64, 64), rec.extra, 64)  # 0 in [-1, 1] is 0.5 grey
        distances = [math.dist([0.5] * 3, [c / 255 for c in s["rgb"]]) for s in rec.extra["synthetic"]]
        assert grey["color_error"] == pytest.approx(sum(distances) / len(distances), abs=1e-5)
        assert grey["mask_contrast"] == pytest.approx(0.0, abs=1e-5)
        assert grey["color_error"] > good["color_error"] + 0.3


def test_shape_metric_needs_synthetic_records():
    with pytest.raises(ValueError, match="write_shapes_dataset"):
        shape_metric(torch.zeros(3, 8, 8), {}, 8)
