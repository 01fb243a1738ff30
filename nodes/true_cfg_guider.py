"""DreamO's true CFG as a GUIDER: the negative branch sees no references and no DreamO embeddings.

The official pipeline (bytedance/DreamO dreamo_pipeline.py, DreamOPipeline.__call__) runs, at step i of
its loop, the positive pass with `guidance if i > 0 else first_step_guidance`, and only for
`true_cfg_start_step <= i < true_cfg_end_step` the negative prompt on the noise tokens alone (its own
neg_guidance): pred = neg + s * (pos - neg). Kontext-style graphs often build the negative from the
positive (ConditioningZeroOut keeps its reference latents); this guider strips every reference from the
negative so the branch is the official one whatever is wired.

The combination itself is core's `comfy.samplers.sampling_function`, the one CFGGuider calls, so pre-CFG
(APG, TCFG, FreSca), sampler_cfg_function (RescaleCFG) and post-CFG patches act here exactly as on
core's guider. Outside the window it gets cfg 1, where core skips the negative branch.
"""

from __future__ import annotations

import math

import comfy.conds
import comfy.samplers
import torch
from comfy_api.latest import io

from .conditioning_edit import without_references
from .input_checks import require_finite_floats

# KSamplerAdvanced's end_at_step uses the same ceiling: any value past the last step means "through the end".
MAX_STEP = 10000
# Sigmas reach the model as float32 products (sigma * ones); slack so a call at a listed sigma is not
# pushed into the previous step by rounding.
SIGMA_REL_TOL = 1e-5


def step_of(sigma: float, sigmas: list[float]) -> int:
    """Index i of the sampler step a model call at `sigma` belongs to, over a descending schedule.

    Step i spans sigmas[i] >= sigma > sigmas[i+1], so the inner calls of multi-call samplers land in
    their step by sigma alone (dpm_2's midpoint between two listed sigmas; heun's corrector at
    sigmas[i+1] opens step i+1, which keeps the guided denoiser a function of sigma, as the ODE solver
    assumes). Calls above sigmas[0] count for step 0, calls at or below the last sigma for the last step.
    """
    step = 0
    for i in range(1, len(sigmas) - 1):
        if sigma > sigmas[i] and not math.isclose(sigma, sigmas[i], rel_tol=SIGMA_REL_TOL):
            break
        step = i
    return step


def takes_distilled_guidance(model) -> bool:
    """Whether the diffusion model embeds a distilled guidance value (FLUX.1-dev yes, schnell / SD3 no)."""
    params = getattr(model.get_model_object("diffusion_model"), "params", None)
    return bool(getattr(params, "guidance_embed", False))


class TrueNegativeCFGGuider(comfy.samplers.CFGGuider):
    def set_cfg(self, cfg: float, start_step: int = 0, end_step: int = MAX_STEP, first_step_guidance: float = 0.0):
        self.cfg = cfg
        self.start_step = start_step
        self.end_step = end_step
        self.first_step_guidance = first_step_guidance

    def set_conds(self, positive, negative):
        self.inner_set_conds({"positive": positive, "negative": without_references(negative)})

    def step_index(self, timestep, model_options) -> int:
        # Core's inner_sample puts the sigmas this guider's sample() got here (v0.3.60 and v0.8.0 alike).
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None:
            raise RuntimeError(
                "DreamO True CFG Guider: the sampler did not pass the step schedule (transformer_options "
                "'sample_sigmas'), so the step window cannot be placed. Run the guider through "
                "SamplerCustomAdvanced, or set start_step 0, end_step 10000 and first_step_guidance 0."
            )
        return step_of(float(timestep.max()), [float(s) for s in sigmas])

    def positive_with_guidance(self, positive: list[dict], guidance: float) -> list[dict]:
        """Copies of the processed positive conds with their distilled guidance replaced (step 0 only)."""
        out = []
        for cond in positive:
            model_conds = cond.get("model_conds", {})
            current = model_conds.get("guidance")
            if current is None:
                raise ValueError(
                    f"first_step_guidance {guidance} replaces FLUX.1-dev's distilled guidance, but the positive "
                    "conditioning carries none (FluxDisableGuidance, or a model without guidance). Set "
                    "first_step_guidance to 0, or remove FluxDisableGuidance."
                )
            # full_like keeps the shape, dtype and device core's Flux.extra_conds gave the value.
            replaced = comfy.conds.CONDRegular(torch.full_like(current.cond, guidance))
            out.append({**cond, "model_conds": {**model_conds, "guidance": replaced}})
        return out

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        positive = self.conds.get("positive")
        cfg = self.cfg
        if not math.isclose(cfg, 1.0) or self.first_step_guidance > 0:
            step = self.step_index(timestep, model_options)
            if not self.start_step <= step < self.end_step:
                cfg = 1.0
            if step == 0 and self.first_step_guidance > 0:
                positive = self.positive_with_guidance(positive, self.first_step_guidance)
        return comfy.samplers.sampling_function(
            self.inner_model, x, timestep, self.conds.get("negative"), positive, cfg,
            model_options=model_options, seed=seed,
        )


STEP_MAPPING = (
    "Steps are those of this run, counted from 0 over the sigmas the guider gets (with denoise < 1 or split "
    "sigmas, step 0 is the first sigma it gets). The official window is given for its step count: to keep "
    "it at N steps scale it, e.g. official start 0 / end 6 at 12 steps -> start 0*N/12, end 6*N/12."
)


class TrueCFGGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RefCustom_TrueCFGGuider",
            display_name="DreamO True CFG Guider",
            category="refcustom/dreamo",
            description=(
                "GUIDER for SamplerCustomAdvanced with a real negative prompt, as DreamO's true CFG: the negative branch "
                "runs without references and without DreamO's embeddings (they are stripped from it), on steps "
                "start_step <= i < end_step only (as the official true_cfg_start_step / true_cfg_end_step). cfg 1 "
                "runs the positive only. Pre-CFG, CFG and post-CFG model patches (APG, RescaleCFG, ...) apply as on "
                "core's CFGGuider. " + STEP_MAPPING
            ),
            inputs=[
                io.Model.Input("model", tooltip="The FLUX model with DreamO loaded (Load DreamO (FLUX))."),
                io.Conditioning.Input("positive", tooltip="Prompt with DreamO references."),
                io.Conditioning.Input("negative", tooltip="Negative prompt; any references on it are removed. It "
                                      "keeps its own FluxGuidance (the official neg_guidance, 3.5 by default)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="True CFG scale; 1 disables the negative branch (the cfg-distill LoRA makes it optional)."),
                io.Int.Input("start_step", default=0, min=0, max=MAX_STEP,
                             tooltip="First step (from 0) with true CFG, as the official true_cfg_start_step; 0 = "
                                     "from the first step. " + STEP_MAPPING),
                io.Int.Input("end_step", default=MAX_STEP, min=0, max=MAX_STEP,
                             tooltip="True CFG stops before this step (exclusive, as the official true_cfg_end_step); "
                                     "10000 or anything past the last step = through the end. " + STEP_MAPPING),
                io.Float.Input("first_step_guidance", default=0.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Distilled FLUX guidance of the positive branch on step 0 only (the official "
                                       "first_step_guidance); 0 = the conditioning's own guidance (off). The "
                                       "negative keeps its own guidance. Needs a guidance-distilled FLUX (dev)."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, start_step, end_step, first_step_guidance) -> io.NodeOutput:
        require_finite_floats(cls, {"cfg": cfg, "first_step_guidance": first_step_guidance})
        if start_step > end_step:
            raise ValueError(
                f"start_step ({start_step}) must not exceed end_step ({end_step}): the window is "
                "start_step <= step < end_step. Lower start_step or raise end_step."
            )
        if first_step_guidance < 0:
            raise ValueError(f"first_step_guidance must be >= 0 (0 = off), got {first_step_guidance}.")
        if first_step_guidance > 0 and not takes_distilled_guidance(model):
            raise ValueError(
                f"first_step_guidance {first_step_guidance} replaces the distilled guidance of a guidance-distilled "
                "FLUX (FLUX.1-dev), but this model embeds none (schnell, or not FLUX). Set first_step_guidance to 0."
            )
        guider = TrueNegativeCFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg, start_step, end_step, first_step_guidance)
        return io.NodeOutput(guider)
