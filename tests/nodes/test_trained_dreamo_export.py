"""A DreamO file trained by train/ loads in `Load DreamO (FLUX)` and behaves as in the trainer (tier 2).

The trainer starts from the diffusers twin of the ComfyUI tiny FLUX (same base weights), trains a
few steps on the synthetic shapes task, and exports in the official layout (float32). ComfyUI then
loads that file through the loader node, and its forward with two DreamO references must equal the
trainer's forward (diffusers + peft + DreamO embeddings) on the same inputs, to 1e-4 in float32.
"""

import comfy.model_management
import pytest
import torch

from refcustom.model.dreamo_conditioning import DreamOReference, DreamOReferenceSet
from refcustom.tests.nodes.diffusers_twin import diffusers_flux_folder
from refcustom.tests.nodes.dreamo_loading import load_dreamo
from refcustom.train.components import pack, unpack
from refcustom.train.config import config_from_dict
from refcustom.train.synthetic import write_shapes_dataset
from refcustom.train.trainer import Trainer

pytestmark = pytest.mark.tier2


@pytest.fixture
def trained(tmp_path, tiny_flux, models_dir):
    folder = diffusers_flux_folder(tmp_path / "tiny-flux", tiny_flux)  # the trainer's base = ComfyUI's tiny FLUX
    data = write_shapes_dataset(tmp_path / "shapes", count=6, seed=1)
    config = config_from_dict({
        "mode": "dreamo", "output_dir": str(tmp_path / "run"), "seed": 5,
        "model": {"pretrained": str(folder), "max_text_tokens": 32},
        "data": {"folder": str(data), "resolution": 64, "reference_resolution": 32, "batch_size": 2},
        "lora": {"rank": 4, "alpha": 8},  # alpha != rank: the export must fold the scale into `up`
        "dreamo": {"routing_layers": [0, 1]},
        "optim": {"learning_rate": 5e-3},
        "stages": [{"name": "train", "steps": 6}],
        "run": {"sample_count": 0, "export_dtype": "float32",
                "export_name": str(models_dir / "dreamo" / "trained_dreamo.safetensors")},
    })
    trainer = Trainer(config)
    path = trainer.train()
    assert path.is_file()
    return trainer, path


def test_exported_dreamo_file_forward_equals_the_trainer(trained, tiny_flux, models_dir):
    trainer, path = trained
    patched, _ = load_dreamo(tiny_flux, dreamo_file=path.name)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 16, 8, 8, generator=g)
    refs = [torch.randn(2, 16, 4, 6, generator=g), torch.randn(2, 16, 6, 4, generator=g)]
    context, y = torch.randn(2, 7, 32, generator=g), torch.randn(2, 32, generator=g)
    t, guidance = torch.tensor([0.7, 0.4]), torch.tensor([3.5, 3.5])

    comfy.model_management.load_models_gpu([patched], force_full_load=True)
    references = DreamOReferenceSet((DreamOReference(index=1, slot=0), DreamOReference(index=2, slot=1)))
    with torch.no_grad():
        ours = patched.model.diffusion_model(
            x, t, context, y=y, guidance=guidance, ref_latents=refs, ref_latents_method="uxo",
            refcustom_dreamo=references, transformer_options={"wrappers": patched.wrappers},
        )
        model = trainer.method.model.eval()
        theirs = model(pack(x), [pack(r) for r in refs], [1, 2], [(4, 4), (2, 3), (3, 2)], context, y, t, guidance)
    theirs = unpack(theirs, 8, 8)
    assert ours.shape == theirs.shape == (2, 16, 8, 8)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # The same inputs without the LoRA differ: the comparison is sensitive to the trained LoRA.
    unpatched, _ = load_dreamo(tiny_flux, dreamo_file=path.name, dreamo_strength=0.0)
    comfy.model_management.load_models_gpu([unpatched], force_full_load=True)
    with torch.no_grad():
        without = unpatched.model.diffusion_model(
            x, t, context, y=y, guidance=guidance, ref_latents=refs, ref_latents_method="uxo",
            refcustom_dreamo=references, transformer_options={"wrappers": unpatched.wrappers},
        )
    assert (without - ours).abs().max() > 1e-3


def test_placeholder_table_reaches_the_text_node(trained):
    """The trained [ref#k] rows are what the loader hands to DreamO Text Encode."""
    trainer, path = trained
    from refcustom.model.dreamo_weights import read_dreamo_file

    read = read_dreamo_file(path)
    torch.testing.assert_close(read.embeddings.placeholders, trainer.method.model.placeholders.detach())
