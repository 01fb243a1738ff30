"""AlignGen trained by train/, loaded in ComfyUI, against the trainer's own forward (tier 2, in-process).

The trainer starts from the diffusers twin of ComfyUI's tiny FLUX and trains a few AlignGen steps
(reference-only LoRA, S*, DEM); the export goes through `Load AlignGen (FLUX)`. ComfyUI's forward
with the AlignGen payload (reference-only LoRA hooks for the pass, selective attention override) must
equal the trainer's forward (diffusers, LoRA on the trailing rows, dense-equivalent mask) on the
same inputs, to 1e-4 in float32. A pass without the payload is plain FLUX.
"""

import comfy.model_management
import pytest
import torch

from refcustom.nodes.aligngen_loader import AlignGenLoader
from refcustom.nodes.aligngen_patch import AlignGenConditioning
from refcustom.tests.nodes.diffusers_twin import diffusers_flux_folder
from refcustom.train.components import pack, unpack
from refcustom.train.config import config_from_dict
from refcustom.train.synthetic import write_shapes_dataset
from refcustom.train.trainer import Trainer

pytestmark = pytest.mark.tier2


@pytest.fixture
def trained_aligngen(tmp_path, tiny_flux, models_dir):
    folder = diffusers_flux_folder(tmp_path / "tiny-flux", tiny_flux)  # the trainer's base = ComfyUI's tiny FLUX
    data = write_shapes_dataset(tmp_path / "shapes", count=6, seed=3, max_references=1)
    config = config_from_dict({
        "mode": "aligngen", "output_dir": str(tmp_path / "run"), "seed": 2,
        "model": {"pretrained": str(folder), "tiny_dir": str(folder), "max_text_tokens": 32, "redux": "tiny"},
        "data": {"folder": str(data), "resolution": 64, "reference_resolution": 32, "batch_size": 2},
        "lora": {"rank": 4, "alpha": 8}, "aligngen": {"dem_heads": 2},
        "optim": {"learning_rate": 5e-3}, "stages": [{"name": "train", "steps": 4}],
        "run": {"sample_count": 0, "export_dtype": "float32",
                "export_name": str(models_dir / "loras" / "aligngen_trained.safetensors")},
    })
    trainer = Trainer(config)
    path = trainer.train()
    return trainer, path


def inputs(batch=2):
    g = torch.Generator().manual_seed(4)
    return {"x": torch.randn(batch, 16, 8, 8, generator=g), "ref": torch.randn(batch, 16, 4, 6, generator=g),
            "context": torch.randn(batch, 9, 32, generator=g), "y": torch.randn(batch, 32, generator=g),
            "t": torch.tensor([0.7, 0.3][:batch]), "guidance": torch.full((batch,), 3.5)}


def comfy_forward(patched, data, payload):
    comfy.model_management.load_models_gpu([patched], force_full_load=True)
    extra = {} if payload is None else {"refcustom_aligngen": payload}
    with torch.no_grad():
        return patched.model.diffusion_model(
            data["x"], data["t"], data["context"], y=data["y"], guidance=data["guidance"], ref_latents=[data["ref"]],
            ref_latents_method="uxo", transformer_options={"wrappers": patched.wrappers}, **extra,
        )


def test_comfy_forward_equals_the_trainer(trained_aligngen, tiny_flux):
    trainer, path = trained_aligngen
    patched, weights = AlignGenLoader.execute(tiny_flux, path.name, 1.0).args
    data = inputs()
    ours = comfy_forward(patched, data, AlignGenConditioning(concept_start=2, concept_end=5, reference_slot=0))
    concept = torch.zeros(2, 9, dtype=torch.bool)
    concept[:, 2:5] = True
    model = trainer.method.model.eval()
    with torch.no_grad():
        theirs = unpack(model(pack(data["x"]), pack(data["ref"]), [(4, 4), (2, 3)], data["context"], data["y"],
                              data["t"], data["guidance"], concept), 8, 8)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # Sensitivity: without the LoRA, or with another concept span, the result moves.
    no_lora = comfy_forward(AlignGenLoader.execute(tiny_flux, path.name, 0.0).args[0], data,
                            AlignGenConditioning(2, 5, 0))
    assert (no_lora - ours).abs().max() > 1e-4
    other_span = comfy_forward(patched, data, AlignGenConditioning(0, 1, 0))
    assert (other_span - ours).abs().max() > 1e-5
    # The DEM and S* that reach the conditioning node are the trained ones.
    torch.testing.assert_close(weights.weights.learned_token, model.learned_token.detach().reshape(-1))


def test_pass_without_payload_is_plain_flux(trained_aligngen, tiny_flux):
    _, path = trained_aligngen
    patched, _ = AlignGenLoader.execute(tiny_flux, path.name, 1.0).args
    data = inputs()
    with_patch = comfy_forward(patched, data, None)
    plain = comfy_forward(tiny_flux, data, None)
    torch.testing.assert_close(with_patch, plain, rtol=0, atol=0)


def test_loader_errors_name_the_fix(trained_aligngen, tiny_flux, models_dir):
    from refcustom.model.aligngen_weights import read_aligngen_file

    with pytest.raises(ValueError, match="Load DreamO"):
        read_aligngen_file(models_dir / "dreamo" / "dreamo.safetensors")
    with pytest.raises(ValueError, match="LoraLoaderModelOnly"):
        read_aligngen_file(models_dir / "loras" / "flux-turbo.safetensors")
    _, path = trained_aligngen
    patched, _ = AlignGenLoader.execute(tiny_flux, path.name, 1.0).args
    with pytest.raises(ValueError, match="already has AlignGen"):
        AlignGenLoader.execute(patched, path.name, 1.0)
