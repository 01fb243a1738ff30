"""AlignGen Conditioning on ComfyUI's own text encoders, VAE and Redux classes (tier 2, in-process).

Checked against an independent computation: the prompt encoded with S*'s vector spliced in (T5
rows unchanged except S*'s), S*'s row replaced by the DEM's first output row over the rows of S*
and the concept name with the Redux tokens, the reference latent appended in the diagonal layout,
and the payload naming the concept rows. The DEM runs once per prompt (in the node).
"""

from pathlib import Path

import pytest
import torch

from refcustom.model.aligngen import DeviationExtractionModule
from refcustom.model.aligngen_weights import AlignGenWeights
from refcustom.model.reference_preprocess import area_resize_size
from refcustom.nodes.aligngen_conditioning import AlignGenConditioningNode, tokenize_with_learned_token
from refcustom.nodes.aligngen_loader import managed
from refcustom.nodes.aligngen_patch import ALIGNGEN_COND_KEY
from refcustom.tests.nodes.aligngen_inputs import tiny_redux

pytestmark = pytest.mark.tier2


@pytest.fixture
def aligngen():
    torch.manual_seed(0)
    dem = DeviationExtractionModule(32, 32, heads=2)
    with torch.no_grad():
        for p in dem.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return managed(AlignGenWeights(torch.randn(32), dem.eval(), (), 1.0, "S*", Path("test.safetensors")))


@pytest.fixture
def redux():
    return tiny_redux()


def run(tiny_clip, tiny_vae, aligngen, redux, text, concept="red guitar", ref_res=64):
    style_model, vision = redux
    image = torch.rand(1, 80, 96, 3)
    return AlignGenConditioningNode.execute(tiny_clip, aligngen, text, concept, style_model, vision, tiny_vae, image,
                                            ref_res).args[0]


def test_s_star_row_is_the_dem_output_and_nothing_else_changes(tiny_clip, tiny_vae, aligngen, redux):
    text = "a photo of a red guitar on a beach"
    calls = []
    aligngen.weights.dem.register_forward_hook(lambda *a: calls.append(1))
    out = run(tiny_clip, tiny_vae, aligngen, redux, text)
    assert len(calls) == 1  # once per prompt, in the node
    embedding, cond = out[0]
    payload = cond["model_conds"][ALIGNGEN_COND_KEY].cond
    start, end = payload.concept_start, payload.concept_end

    tokens, start2, end2 = tokenize_with_learned_token(tiny_clip, "a photo of a", "red guitar on a beach", "S*",
                                                       aligngen.weights.learned_token, "red guitar")
    assert (start, end) == (start2, end2)
    t5 = tokens["t5xxl"][0]
    assert torch.equal(t5[start][0], aligngen.weights.learned_token.float())
    concept_only = [t for t, _ in tiny_clip.tokenize("red guitar")["t5xxl"][0]]
    assert [t for t, _ in t5[start + 1:end]] == concept_only[:end - start - 1]
    assert end - start - 1 == len([t for t in concept_only if t not in (0, 1)])  # T5 pad 0, end 1

    plain = tiny_clip.encode_from_tokens_scheduled(tokens)[0][0]
    redux_tokens = redux[0].get_cond(redux[1])
    with torch.no_grad():
        expected_row = aligngen.weights.dem(plain[:, start:end].float(), redux_tokens.float())[0, 0]
    torch.testing.assert_close(embedding[0, start], expected_row.to(embedding), rtol=1e-5, atol=1e-5)
    others = torch.ones(embedding.shape[1], dtype=torch.bool)
    others[start] = False
    assert torch.equal(embedding[:, others], plain[:, others])
    assert not torch.allclose(embedding[0, start], plain[0, start])

    assert cond["reference_latents_method"] == "uxo"
    h, w = area_resize_size(80, 96, 64)  # DreamO's area resize, multiples of 16: 48 x 64
    assert cond["reference_latents"][0].shape[1:] == (16, h // 8, w // 8)
    assert payload.reference_slot == 0


def test_reference_keeps_aspect_in_multiples_of_16(tiny_clip, tiny_vae, aligngen, redux):
    out = run(tiny_clip, tiny_vae, aligngen, redux, "a red guitar", ref_res=128)
    latent = out[0][1]["reference_latents"][0]
    height, width = latent.shape[-2] * 8, latent.shape[-1] * 8
    assert height % 16 == 0 and width % 16 == 0 and width > height  # 96x80 input is wider than tall


def test_existing_s_star_is_not_written_twice(tiny_clip, tiny_vae, aligngen, redux):
    out = run(tiny_clip, tiny_vae, aligngen, redux, "a photo of a S* red guitar")
    single = run(tiny_clip, tiny_vae, aligngen, redux, "a photo of a red guitar")
    torch.testing.assert_close(out[0][0], single[0][0])


def test_errors_name_the_fix(tiny_clip, tiny_vae, aligngen, redux):
    with pytest.raises(ValueError, match="does not contain the concept name"):
        run(tiny_clip, tiny_vae, aligngen, redux, "a photo of a cat", concept="red guitar")
    with pytest.raises(ValueError, match="concept name"):
        run(tiny_clip, tiny_vae, aligngen, redux, "a photo of a cat", concept="  ")
    wide = managed(AlignGenWeights(torch.randn(48), DeviationExtractionModule(48, 32, heads=2), (), 1.0, "S*", Path("x")))
    with pytest.raises(ValueError, match="wide"):
        run(tiny_clip, tiny_vae, wide, redux, "a red guitar")


class OverflowingVAE:
    """Stands in for an fp16 VAE that overflows: the tiny VAE's latents with one NaN."""

    def __init__(self, vae):
        self.vae = vae

    def encode(self, pixels):
        latent = self.vae.encode(pixels).clone()
        latent[0, 0, 0, 0] = float("nan")
        return latent


def test_a_vae_returning_nan_is_an_error_naming_the_fix_in_both_reference_nodes(tiny_clip, tiny_vae, aligngen, redux):
    from refcustom.nodes.dreamo_reference import DreamOReferenceNode

    expected = r"the VAE returned NaN/inf for this reference image.*--fp32-vae or --bf16-vae"
    with pytest.raises(RuntimeError, match=expected):
        run(tiny_clip, OverflowingVAE(tiny_vae), aligngen, redux, "a red guitar")
    prompt = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize("a toy"))
    with pytest.raises(RuntimeError, match=expected):
        DreamOReferenceNode.execute(prompt, OverflowingVAE(tiny_vae), torch.rand(2, 64, 64, 3), "ip", 64, 0, None)
