"""Long node work reports through ComfyUI's progress bar (tier 2, in-process): the global hook the
server forwards to the browser receives every tick, ending at the total."""

import comfy.utils
import pytest
import torch

from refcustom.tests.nodes.dreamo_loading import load_dreamo

pytestmark = pytest.mark.tier2


@pytest.fixture
def ticks():
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    yield seen
    comfy.utils.set_progress_bar_global_hook(None)


def test_dreamo_loader_ticks_once_per_weight_file(tiny_flux, models_dir, ticks):
    load_dreamo(tiny_flux, cfg_distill_lora="dreamo_cfg_distill.safetensors", cfg_distill_strength=1.0,
                turbo_lora="flux-turbo.safetensors", turbo_strength=1.0)
    assert ticks == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_aligngen_nodes_tick_to_completion(tiny_flux, tiny_clip, tiny_vae, models_dir, ticks):
    from refcustom.nodes.aligngen_conditioning import AlignGenConditioningNode
    from refcustom.nodes.aligngen_loader import AlignGenLoader
    from refcustom.tests.nodes.aligngen_inputs import tiny_redux

    _, weights = AlignGenLoader.execute(tiny_flux, "aligngen_lora.safetensors", 1.0).args
    assert ticks == [(1, 2), (2, 2)]
    ticks.clear()
    style_model, vision = tiny_redux()
    AlignGenConditioningNode.execute(tiny_clip, weights, "a red guitar", "red guitar", style_model, vision, tiny_vae,
                                     torch.rand(1, 64, 64, 3), 64)
    assert ticks == [(1, 3), (2, 3), (3, 3)]
