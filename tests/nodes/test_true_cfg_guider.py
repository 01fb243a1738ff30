"""DreamO True CFG Guider inside the real host: the official step window, core's CFG machinery and the
first-step guidance (tier 2, in-process).

What each model call ran is recorded on a clone of the model: a PREDICT_NOISE wrapper opens one entry
per denoiser evaluation (its sigma), a DIFFUSION_MODEL wrapper adds each branch the forward passes ran
(`cond_or_uncond`: 0 positive, 1 negative) with the distilled `guidance` each branch got.
"""

import comfy.patcher_extension
import comfy.samplers
import node_helpers
import pytest
import torch
from comfy_extras.nodes_apg import APG
from comfy_extras.nodes_cfg import CFGNorm
from comfy_extras.nodes_model_advanced import RescaleCFG

from refcustom.nodes.true_cfg_guider import TrueCFGGuiderNode
from refcustom.tests.fixtures.tiny_host_models import build_tiny_sd3
from refcustom.tests.nodes.core_nodes import run_core_node

pytestmark = pytest.mark.tier2

POSITIVE, NEGATIVE = 0, 1  # cond_or_uncond values
CFG = 2.0


def encode(clip, text, guidance=None):
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    return cond if guidance is None else node_helpers.conditioning_set_values(cond, {"guidance": guidance})


def true_cfg_guider(model, positive, negative, cfg=CFG, start_step=0, end_step=10000, first_step_guidance=0.0):
    (guider,) = TrueCFGGuiderNode.execute(model, positive, negative, cfg, start_step, end_step,
                                          first_step_guidance).args
    return guider


def schedule(model, steps):
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)


def run(guider, model, sigmas, sampler="euler"):
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(3))
    return guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object(sampler), sigmas, seed=3)


class Recorder:
    def __init__(self):
        self.evaluations = []  # one dict per denoiser evaluation: sigma, branch -> guidance

    def predict_noise(self, executor, x, timestep, model_options, seed):
        self.evaluations.append({"sigma": float(timestep.max()), "branches": {}})
        return executor(x, timestep, model_options, seed)

    def diffusion_model(self, executor, x, timestep, context, y, guidance, ref_latents, control, transformer_options,
                        **kwargs):
        chunks = transformer_options["cond_or_uncond"]
        for branch, value in zip(chunks, guidance.chunk(len(chunks)), strict=True):
            self.evaluations[-1]["branches"][branch] = round(float(value[0]), 4)
        return executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)

    def attach(self, model):
        recorded = model.clone()
        recorded.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, "test_true_cfg",
                                      self.predict_noise)
        recorded.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_true_cfg",
                                      self.diffusion_model)
        return recorded

    def negative_ran(self) -> list[bool]:
        return [NEGATIVE in e["branches"] for e in self.evaluations]

    def guidance(self, branch) -> list:
        return [e["branches"].get(branch) for e in self.evaluations]


@pytest.fixture
def conds(tiny_clip):
    return encode(tiny_clip, "a red toy robot on a table", 4.5), encode(tiny_clip, "blurry", 2.0)


# ---- a. the step window: start_step <= i < end_step, as the official loop ----

@pytest.mark.parametrize("steps, start, end, first_sigma", [
    (12, 0, 6, 0),  # the official window at its 12 steps: CFG on steps 0..5, not 6
    (12, 3, 8, 0),
    (12, 2, 10000, 0),  # end past the last step: through the end
    (12, 5, 5, 0),  # empty window
    (12, 0, 3, 6),  # split sigmas (as denoise < 1): step 0 is the first sigma the guider gets
])
def test_window_is_the_official_step_range(tiny_flux, conds, steps, start, end, first_sigma):
    recorder = Recorder()
    model = recorder.attach(tiny_flux)
    sigmas = schedule(model, steps)[first_sigma:]
    run(true_cfg_guider(model, *conds, start_step=start, end_step=end), model, sigmas)
    n = len(sigmas) - 1
    assert recorder.negative_ran() == [start <= i < end for i in range(n)]


@pytest.mark.parametrize("sampler", ["dpm_2", "heun"])
def test_two_call_samplers_map_each_inner_call_to_its_step(tiny_flux, conds, sampler):
    """Both evaluate step i at sigmas[i] and once more before step i+1 (the last step, to sigma 0, is one
    Euler call). dpm_2's second call is at a midpoint inside step i; heun's corrector is at sigmas[i+1]
    itself, where step i+1 begins, so it counts for step i+1 (a call belongs to step i when
    sigmas[i] >= sigma > sigmas[i+1])."""
    steps, start, end = 6, 1, 4
    recorder = Recorder()
    model = recorder.attach(tiny_flux)
    sigmas = schedule(model, steps)
    run(true_cfg_guider(model, *conds, start_step=start, end_step=end), model, sigmas, sampler)
    second_call_step = {"dpm_2": 0, "heun": 1}[sampler]  # offset from the step that makes the call
    call_steps = [i + offset for i in range(steps - 1) for offset in (0, second_call_step)] + [steps - 1]
    assert len(recorder.evaluations) == len(call_steps)
    first_calls = recorder.evaluations[::2]
    assert [e["sigma"] for e in first_calls] == pytest.approx([float(s) for s in sigmas[:-1]], rel=1e-6)
    if sampler == "heun":
        correctors = recorder.evaluations[1::2]
        assert [e["sigma"] for e in correctors] == pytest.approx([float(s) for s in sigmas[1:-1]], rel=1e-6)
    assert recorder.negative_ran() == [start <= i < end for i in call_steps]


def test_inverted_window_is_an_error_naming_the_inputs(tiny_flux, conds):
    with pytest.raises(ValueError, match="start_step .* must not exceed end_step"):
        true_cfg_guider(tiny_flux, *conds, start_step=7, end_step=6)


# ---- b. core's CFG machinery: pre-CFG, cfg function and post-CFG patches act as on CFGGuider ----

def apg(model):
    # eta 0 drops the guidance component parallel to the positive; no norm cap, no momentum (stateless).
    return run_core_node(APG, model=model, eta=0.0, norm_threshold=0.0, momentum=0.0)[0]


def apg_rescale_cfgnorm(model):
    model = apg(model)
    (model,) = run_core_node(RescaleCFG, model=model, multiplier=0.7)
    return run_core_node(CFGNorm, model=model, strength=0.9)[0]


@pytest.mark.parametrize("patch", [apg, apg_rescale_cfgnorm], ids=lambda f: f.__name__)
def test_model_cfg_patches_act_as_on_core_cfg_guider(tiny_flux, conds, patch):
    positive, negative = conds  # no references on the negative: both guiders see the same branches
    patched = patch(tiny_flux)
    sigmas = schedule(tiny_flux, 4)

    core = comfy.samplers.CFGGuider(patched)
    core.set_conds(positive, negative)
    core.set_cfg(CFG)
    expected = run(core, patched, sigmas)

    ours = run(true_cfg_guider(patched, positive, negative), patched, sigmas)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    unpatched = run(true_cfg_guider(tiny_flux, positive, negative), tiny_flux, sigmas)
    assert (unpatched - expected).abs().max() > 1e-3, "the patch changes nothing: the test could not fail"


# ---- c. first-step guidance ----

def test_first_step_guidance_replaces_the_positive_guidance_on_step_0_only(tiny_flux, conds):
    steps = 4
    for cfg, start in ((CFG, 0), (CFG, 1), (1.0, 0)):
        recorder = Recorder()
        model = recorder.attach(tiny_flux)
        run(true_cfg_guider(model, *conds, cfg=cfg, start_step=start, first_step_guidance=7.0), model,
            schedule(model, steps))
        assert recorder.guidance(POSITIVE) == [7.0, 4.5, 4.5, 4.5], (cfg, start)
        with_negative = [cfg != 1.0 and i >= start for i in range(steps)]
        assert recorder.guidance(NEGATIVE) == [2.0 if n else None for n in with_negative], (cfg, start)


def test_first_step_guidance_0_keeps_the_conditioning_guidance(tiny_flux, conds):
    recorder = Recorder()
    model = recorder.attach(tiny_flux)
    sigmas = schedule(model, 4)
    off = run(true_cfg_guider(model, *conds, first_step_guidance=0.0), model, sigmas)
    assert recorder.guidance(POSITIVE) == [4.5] * 4 and recorder.guidance(NEGATIVE) == [2.0] * 4
    on = run(true_cfg_guider(model, *conds, first_step_guidance=7.0), model, sigmas)
    assert (on - off).abs().max() > 1e-4


def test_first_step_guidance_errors_name_the_fix(tiny_flux, tiny_clip, conds):
    sd3 = build_tiny_sd3(seed=0)
    with pytest.raises(ValueError, match="Set first_step_guidance to 0"):
        true_cfg_guider(sd3, *conds, first_step_guidance=5.0)
    true_cfg_guider(sd3, *conds, first_step_guidance=0.0)  # 0 is off: any model

    no_guidance = node_helpers.conditioning_set_values(conds[0], {"guidance": None})  # FluxDisableGuidance
    guider = true_cfg_guider(tiny_flux, no_guidance, conds[1], first_step_guidance=5.0)
    with pytest.raises(ValueError, match="remove FluxDisableGuidance"):
        run(guider, tiny_flux, schedule(tiny_flux, 2))
    with pytest.raises(ValueError, match="first_step_guidance must be >= 0"):
        true_cfg_guider(tiny_flux, *conds, first_step_guidance=-1.0)
