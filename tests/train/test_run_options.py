"""Run options of the trainer on the tiny model (tier 1): caches, samples, checkpoints, precision.

- The latent/text caches change nothing: a run with them equals a run without, and a second run
  reads them (hits, no misses).
- Sample images are written at `sample_every` and at the end.
- A half-written checkpoint (a leftover `.tmp` folder) is never resumed from.
- Gradient checkpointing gives the same losses; bf16 autocast over a bf16 base trains with finite losses;
  gradient accumulation counts optimizer steps, not micro-batches.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from refcustom.tests.train.test_dreamo_training import make_config, shapes, tiny_flux_dir  # noqa: F401 (fixtures)
from refcustom.train.trainer import Trainer


def losses(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_caches_change_nothing_and_are_reused(tmp_path, tiny_flux_dir, shapes):  # noqa: F811
    stages = [{"name": "train", "steps": 4}]
    cached = make_config(tmp_path / "cached", tiny_flux_dir, shapes, stages=stages)
    uncached = make_config(tmp_path / "uncached", tiny_flux_dir, shapes, stages=stages, data={"cache": False})
    Trainer(cached).train()
    Trainer(uncached).train()
    assert losses(tmp_path / "cached") == losses(tmp_path / "uncached")
    again = Trainer(make_config(tmp_path / "again", tiny_flux_dir, shapes, stages=stages,
                                data={"cache_dir": str(tmp_path / "cached" / "cache")}))
    again.train()
    assert again.latent_cache.hits > 0 and again.latent_cache.misses == 0
    assert losses(tmp_path / "again") == losses(tmp_path / "cached")


def test_samples_are_written(tmp_path, tiny_flux_dir, shapes):  # noqa: F811
    config = make_config(tmp_path / "run", tiny_flux_dir, shapes, stages=[{"name": "train", "steps": 4}],
                         run={"sample_every": 2, "sample_count": 1, "sample_steps": 2})
    Trainer(config).train()
    names = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert names == ["step-00000002-0.png", "step-00000004-0.png"]
    image = Image.open(tmp_path / "run" / "samples" / names[0])
    assert image.size == (64, 64)


def test_half_written_checkpoint_is_ignored(tmp_path, tiny_flux_dir, shapes):  # noqa: F811
    config = make_config(tmp_path / "run", tiny_flux_dir, shapes)
    trainer = Trainer(config)
    trainer.train(max_steps=10)
    stale = tmp_path / "run" / "checkpoints" / "step-00000020.tmp"
    stale.mkdir()
    (stale / "state.json").write_text("{not json")
    resumed = Trainer(config)
    assert resumed.resume() and resumed.step == 10


def test_gradient_checkpointing_gives_the_same_losses(tmp_path, tiny_flux_dir, shapes):  # noqa: F811
    stages = [{"name": "train", "steps": 3}]
    Trainer(make_config(tmp_path / "a", tiny_flux_dir, shapes, stages=stages)).train()
    Trainer(make_config(tmp_path / "b", tiny_flux_dir, shapes, stages=stages,
                        model={"pretrained": "tiny", "tiny_dir": str(tiny_flux_dir), "max_text_tokens": 32,
                               "gradient_checkpointing": True})).train()
    for a, b in zip(losses(tmp_path / "a"), losses(tmp_path / "b"), strict=True):
        for term in ("loss", "diff", "route", "holder"):
            assert a[term] == pytest.approx(b[term], rel=1e-5, abs=1e-6)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; a test with another precision needs it reset around it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_base_with_autocast_trains(tmp_path, tiny_flux_dir, shapes, fresh_accelerate_state):  # noqa: F811
    config = make_config(tmp_path / "run", tiny_flux_dir, shapes, stages=[{"name": "train", "steps": 2}],
                         model={"pretrained": "tiny", "tiny_dir": str(tiny_flux_dir), "max_text_tokens": 32,
                                "weight_dtype": "bfloat16"},
                         optim={"mixed_precision": "bf16"})
    trainer = Trainer(config)
    trainer.train()
    assert trainer.parts.transformer.x_embedder.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.method.model.parameters() if p.requires_grad)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in losses(tmp_path / "run"))


def test_accumulation_counts_optimizer_steps(tmp_path, tiny_flux_dir, shapes):  # noqa: F811
    config = make_config(tmp_path / "run", tiny_flux_dir, shapes, stages=[{"name": "train", "steps": 3}],
                         optim={"gradient_accumulation_steps": 2})
    trainer = Trainer(config)
    trainer.train()
    assert [r["step"] for r in losses(tmp_path / "run")] == [1, 2, 3]
    assert trainer.position == 6  # 3 steps x 2 micro-batches (12 records / batch 2 = 6 batches: one epoch)
