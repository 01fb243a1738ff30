"""Reading the official DreamO file formats (tier 1: no ComfyUI)."""

import pytest
import torch
from safetensors.torch import save_file

from refcustom.model.dreamo_weights import (
    PLACEHOLDER_ROWS,
    convert_original_lora,
    lora_module_names,
    read_dreamo_file,
)
from refcustom.tests.fixtures import dreamo_files
from refcustom.tests.fixtures.dreamo_files import TINY, tiny_embedding_tables, write_official_tiny_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_official_tiny_files(tmp_path_factory.mktemp("models"))


def test_original_lora_converts_to_the_diffusers_layout_the_official_converter_gives(files):
    main = read_dreamo_file(files["dreamo/dreamo.safetensors"])
    assert main.lora_layout == "dreamo-original"
    # Independent statement of the official converter: fused qkv up split in 3, down shared.
    expected = dreamo_files._diffusers_state_dict(dreamo_files.seed_of("dreamo/dreamo.safetensors"))
    assert set(main.lora) == set(expected)
    for key, tensor in expected.items():
        torch.testing.assert_close(main.lora[key].float(), tensor.float(), rtol=0, atol=0)


def test_every_original_tag_is_mapped(files):
    sd = read_dreamo_file(files["dreamo/dreamo_cfg_distill.safetensors"]).lora
    per_double = 3 + 3 + 1 + 1
    per_single = 3 + 1
    assert len(lora_module_names(sd)) == TINY["depth"] * per_double + TINY["depth_single"] * per_single


def test_embedding_tables_keep_the_last_ten_t5_rows(files):
    tables = tiny_embedding_tables(0)
    for name in ("dreamo/dreamo.safetensors", "dreamo/embedding.safetensors"):
        read = read_dreamo_file(files[name]).embeddings
        torch.testing.assert_close(read.task.float(), tables["dreamo_task_embedding.weight"])
        torch.testing.assert_close(read.index.float(), tables["dreamo_idx_embedding.weight"])
        torch.testing.assert_close(read.placeholders.float(), tables["dreamo_t5_embedding.weight"][-PLACEHOLDER_ROWS:])
        assert read.hidden_size == TINY["hidden"]


def test_embedding_only_file_has_no_lora(files):
    read = read_dreamo_file(files["dreamo/embedding.safetensors"])
    assert read.lora is None and read.embeddings is not None


@pytest.mark.parametrize("name", [dreamo_files.SFT_FILE, dreamo_files.DPO_FILE, dreamo_files.TURBO_FILE,
                                  "dreamo/comfyui/dreamo_comfyui.safetensors"])
def test_comfy_readable_files_pass_through_untouched(files, name):
    read = read_dreamo_file(files[name])
    assert read.lora_layout == "comfy-readable"
    assert read.embeddings is None
    assert len(lora_module_names(read.lora)) > 0


def test_a_file_that_is_not_dreamo_names_what_was_expected(tmp_path):
    path = tmp_path / "ae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ValueError, match="is not a DreamO file.*double_blocks_<i>.*decoder.conv_in.weight"):
        read_dreamo_file(path)


def test_wrong_suffix_and_garbage_files_are_refused(tmp_path):
    ckpt = tmp_path / "dreamo.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        read_dreamo_file(ckpt)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        read_dreamo_file(broken)


def test_incomplete_embedding_tables_are_refused(tmp_path):
    path = tmp_path / "half.safetensors"
    save_file({"dreamo_task_embedding.weight": torch.zeros(2, 8)}, str(path))
    with pytest.raises(ValueError, match="lacks.*dreamo_idx_embedding"):
        read_dreamo_file(path)


def test_lora_pair_missing_its_up_matrix_is_refused():
    with pytest.raises(ValueError, match="lacks its up"):
        convert_original_lora({"double_blocks_0.processor.qkv_lora1.down.weight": torch.zeros(2, 4)})
