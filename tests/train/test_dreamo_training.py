"""The DreamO trainer on the tiny FLUX and the synthetic shapes task (tier 1: no ComfyUI).

- The training model's forward (fused qkv + peft LoRA + embedding hook + capture processor) equals
  plain diffusers FLUX with the LoRA merged by hand into the unfused weights, references packed and
  the diagonal ids and DreamO embedding written out here.
- 50 steps lower the total loss and L_route on fixed evaluation batches.
- A run interrupted at step 20 and resumed logs the same losses, bit for bit, as an uninterrupted one.
- The export has the official DreamO keys and shapes (those of tests/fixtures/dreamo_files.py's
  official-format file at the same rank) and reads back through the nodes' reader.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from refcustom.model.dreamo_weights import read_dreamo_file
from refcustom.train.config import config_from_dict
from refcustom.train.synthetic import write_shapes_dataset
from refcustom.train.tiny_model import write_tiny_flux
from refcustom.train.trainer import Trainer

RANK = 4


@pytest.fixture(scope="module")
def tiny_flux_dir(tmp_path_factory):
    return write_tiny_flux(tmp_path_factory.mktemp("tiny") / "tiny-flux")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", count=12, seed=0)


def make_config(out, model_dir, dataset, **overrides):
    values = {
        "mode": "dreamo", "output_dir": str(out), "seed": 3,
        "model": {"pretrained": "tiny", "tiny_dir": str(model_dir), "max_text_tokens": 32},
        "data": {"folder": str(dataset), "resolution": 64, "reference_resolution": 32, "batch_size": 2},
        "lora": {"rank": RANK},
        "dreamo": {"routing_layers": [0, 1], "lambda_route": 1.0, "lambda_holder": 0.1},
        "optim": {"learning_rate": 2e-3},
        "stages": [{"name": "warmup", "steps": 10, "subsets": ["single"]}, {"name": "full", "steps": 20}],
        "run": {"log_every": 1, "checkpoint_every": 10, "sample_count": 0, "export_dtype": "float32"},
    }
    for key, value in overrides.items():
        values[key] = value if not isinstance(value, dict) else {**values.get(key, {}), **value}
    return config_from_dict(values)


def log_lines(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def merged_unfused_reference(trainer, noisy, refs, grids, context, pooled, sigma, guidance):
    """Independent forward: a fresh diffusers FLUX from the same folder, LoRA merged by hand."""
    from diffusers import FluxTransformer2DModel

    from refcustom.model.dreamo_conditioning import diagonal_position_ids

    plain = FluxTransformer2DModel.from_pretrained(trainer.model_path, subfolder="transformer").eval()
    state = trainer.method.model.trainable_state_dict()
    scale = 1.0  # alpha = rank
    with torch.no_grad():
        for key, down in state.items():
            if not key.endswith("lora_A.weight"):
                continue
            module_name = key.removeprefix("lora.").removesuffix(".lora_A.weight")
            delta = scale * state[key.replace("lora_A", "lora_B")] @ down
            parent_name, leaf = module_name.rsplit(".", 1)
            parent = plain.get_submodule(parent_name)
            if leaf in ("to_qkv", "to_added_qkv"):
                names = ("to_q", "to_k", "to_v") if leaf == "to_qkv" else ("add_q_proj", "add_k_proj", "add_v_proj")
                for name, part in zip(names, delta.chunk(3, dim=0), strict=True):
                    getattr(parent, name).weight += part
            else:
                getattr(parent, leaf).weight += delta
    task, idx = state["condition.task"], state["condition.index"]
    rows = [task[1].expand(noisy.shape[1], -1)] + [(task[0] + idx[k + 1]).expand(r.shape[1], -1) for k, r in enumerate(refs)]
    embedding = torch.cat(rows)
    hook = plain.x_embedder.register_forward_hook(lambda m, a, out: out + embedding)
    try:
        with torch.no_grad():
            out = plain(hidden_states=torch.cat([noisy, *refs], dim=1), encoder_hidden_states=context,
                        pooled_projections=pooled, timestep=sigma, img_ids=diagonal_position_ids(grids[0], grids[1:]),
                        txt_ids=torch.zeros(context.shape[1], 3), guidance=guidance).sample
    finally:
        hook.remove()
    return out[:, :noisy.shape[1]]


def test_training_forward_equals_merged_diffusers_flux(tmp_path, tiny_flux_dir, shapes):
    trainer = Trainer(make_config(tmp_path / "run", tiny_flux_dir, shapes))
    trainer.train(max_steps=3)  # LoRA B is zero at init: train a little so the LoRA matters
    g = torch.Generator().manual_seed(0)
    noisy, refs = torch.randn(2, 16, 64, generator=g), [torch.randn(2, 4, 64, generator=g), torch.randn(2, 6, 64, generator=g)]
    grids = [(4, 4), (2, 2), (2, 3)]
    context, pooled = torch.randn(2, 7, 32, generator=g), torch.randn(2, 32, generator=g)
    sigma, guidance = torch.tensor([0.3, 0.8]), torch.tensor([3.5, 3.5])
    model = trainer.method.model.eval()
    with torch.no_grad():
        ours = model(noisy, refs, [1, 2], grids, context, pooled, sigma, guidance)
    reference = merged_unfused_reference(trainer, noisy, refs, grids, context, pooled, sigma, guidance)
    assert ours.shape == (2, 16, 64)
    lora_b = [v for k, v in trainer.method.model.trainable_state_dict().items() if "lora_B" in k]
    assert max(float(b.abs().max()) for b in lora_b) > 1e-4, "the LoRA must be non-zero for this test to mean anything"
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    # Keeping every token explicitly is the same as no drop.
    with torch.no_grad():
        kept = model(noisy, refs, [1, 2], grids, context, pooled, sigma, guidance, keep=[torch.arange(4), torch.arange(6)])
    torch.testing.assert_close(kept, ours)


def test_fifty_steps_lower_total_loss_and_routing_loss(tmp_path, tiny_flux_dir, shapes):
    config = make_config(tmp_path / "run", tiny_flux_dir, shapes,
                         stages=[{"name": "train", "steps": 50}], run={"checkpoint_every": 50})
    trainer = Trainer(config)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["loss"] < before["loss"], (before, after)
    assert after["route"] < 0.8 * before["route"], (before, after)
    assert (tmp_path / "run" / "dreamo_lora.safetensors").is_file()


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, tiny_flux_dir, shapes):
    whole = make_config(tmp_path / "whole", tiny_flux_dir, shapes)
    Trainer(whole).train()
    split = make_config(tmp_path / "split", tiny_flux_dir, shapes)
    assert Trainer(split).train(max_steps=20) is None  # interrupted: checkpoint at 20, no export
    assert [p.name for p in Trainer(split).checkpoint_dirs()] == ["step-00000010", "step-00000020"]
    Trainer(split).train()  # a new process resumes from step 20 (stage "full", mid-epoch)
    whole_log, split_log = log_lines(tmp_path / "whole"), log_lines(tmp_path / "split")
    assert [r["step"] for r in split_log] == list(range(1, 31))
    assert split_log == whole_log  # every loss term, bit for bit
    a = load_file(str(tmp_path / "whole" / "dreamo_lora.safetensors"))
    b = load_file(str(tmp_path / "split" / "dreamo_lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_is_the_official_dreamo_layout(tmp_path, tiny_flux_dir, shapes):
    from refcustom.tests.fixtures.dreamo_files import _original_state_dict, tiny_embedding_tables

    config = make_config(tmp_path / "run", tiny_flux_dir, shapes, stages=[{"name": "train", "steps": 2}])
    path = Trainer(config).train()
    exported = load_file(str(path))
    official = {**_original_state_dict(0), **tiny_embedding_tables(0)}  # the fixture's official-format file
    shapes_of = lambda sd: {k: tuple(v.shape) for k, v in sd.items() if k != "dreamo_t5_embedding.weight"}  # noqa: E731
    assert shapes_of(exported) == shapes_of(official)
    # The official T5 table is read by its last 10 rows (the fixture has 12); ours has exactly those 10.
    assert exported["dreamo_t5_embedding.weight"].shape == (10, official["dreamo_t5_embedding.weight"].shape[1])
    read = read_dreamo_file(path)
    assert read.lora_layout == "dreamo-original"
    assert read.embeddings.placeholders.shape == (10, 32)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    assert meta["refcustom.mode"] == "dreamo" and meta["refcustom.rank"] == str(RANK)
    assert json.loads(meta["refcustom.stages"])[0]["name"] == "train"


@pytest.mark.parametrize("name", ["dreamo_tiny.yaml", "aligngen_tiny.yaml", "dreamo_flux1_dev.yaml",
                                  "aligngen_flux1_dev.yaml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    from refcustom.train.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "train" / "configs" / name)
    assert config.total_steps > 0
    if "flux1_dev" in name:
        assert config.model.weight_dtype == "bfloat16" and config.optim.mixed_precision == "bf16"
