"""SynCD's guidance-normalized sampling as a GUIDER, and a node that derives its extra branches.

The guider evaluates three conditionings per step through ComfyUI's cond batching
(`calc_cond_batch`: branches whose inputs have the same shapes share one model call) and combines
the denoised predictions with `model.guidance.normalized_guidance`, exact in x0 space.
"""

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from ..model.guidance import GuidanceScales, normalized_guidance
from .conditioning_edit import with_prompt_replaced, without_references
from .input_checks import require_finite_floats


class NormalizedGuidanceGuider(comfy.samplers.CFGGuider):
    def set_scales(self, scales: GuidanceScales, normalize: bool = True):
        self.scales = scales
        self.normalize = normalize

    def set_conds(self, positive, image_only, negative):
        self.inner_set_conds({"positive": positive, "image_only": image_only, "negative": negative})

    def sampling_progress(self, timestep) -> float:
        """0 at pure noise, 1 at clean: the paper's (1000 - t) / 1000 in the model's own timestep units."""
        sampling = self.model_patcher.get_model_object("model_sampling")
        top = float(sampling.timestep(sampling.sigma_max))
        now = float(sampling.timestep(timestep.max()))
        return 1.0 - now / top if top > 0 else 0.0

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        positive = self.conds.get("positive")
        image_only = self.conds.get("image_only")
        negative = self.conds.get("negative")
        e_0, e_image, e_image_text = comfy.samplers.calc_cond_batch(
            self.inner_model, [negative, image_only, positive], x, timestep, model_options
        )
        image_scale = self.scales.image_at(self.sampling_progress(timestep))
        denoised = normalized_guidance(e_0, e_image, e_image_text, image_scale, self.scales.text, self.normalize)
        for fn in model_options.get("sampler_post_cfg_function", []):
            denoised = fn({
                "denoised": denoised, "cond": positive, "uncond": negative, "cond_scale": self.scales.text,
                "model": self.inner_model, "uncond_denoised": e_0, "cond_denoised": e_image_text,
                "sigma": timestep, "model_options": model_options, "input": x,
            })
        return denoised


class NormalizedGuidanceGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RefCustom_NormalizedGuidanceGuider",
            display_name="Normalized Image+Text Guider (SynCD)",
            category="refcustom/guidance",
            description=(
                "GUIDER for SamplerCustomAdvanced balancing image (reference) guidance against text guidance: the "
                "larger guidance direction is scaled down to the smaller one's norm, per sample, so strong "
                "reference guidance stops overexposing. Works with any reference mechanism on the conditioning "
                "(DreamO, ReferenceLatent/Kontext, Redux). SynCD, section 4.3."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The FLUX model to sample (after Load DreamO / Load AlignGen or LoRAs, if any)."),
                io.Conditioning.Input("positive", tooltip="References + prompt."),
                io.Conditioning.Input("image_only", tooltip="References + neutral prompt (see Guidance Branches)."),
                io.Conditioning.Input("negative", tooltip="No references, neutral prompt."),
                io.Float.Input("text_scale", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="s_T, weight of the text direction (positive - image_only). 0 drops the prompt's push."),
                io.Float.Input("image_scale", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="s_I at the first step, weight of the image direction (image_only - negative)."),
                io.Float.Input("image_scale_increase", default=5.0, min=-100.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Added to s_I linearly over sampling (paper: +5 by the end). 0 keeps it constant."),
                io.Boolean.Input("normalize", default=True,
                                 tooltip="Off: plain dual guidance with the same scales (no norm capping), for comparison."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, image_only, negative, text_scale, image_scale, image_scale_increase,
                normalize) -> io.NodeOutput:
        require_finite_floats(cls, {"text_scale": text_scale, "image_scale": image_scale,
                                    "image_scale_increase": image_scale_increase})
        guider = NormalizedGuidanceGuider(model)
        guider.set_conds(positive, image_only, negative)
        guider.set_scales(GuidanceScales(text=text_scale, image_start=image_scale, image_increase=image_scale_increase),
                          normalize)
        return io.NodeOutput(guider)


class GuidanceBranchesNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RefCustom_GuidanceBranches",
            display_name="Guidance Branches (image-only, negative)",
            category="refcustom/guidance",
            description=(
                "From one positive conditioning (prompt + references), builds the other two branches of the "
                "normalized guider: image_only keeps every reference and swaps the prompt for the neutral one; "
                "negative is the neutral prompt without any reference or DreamO embedding. FluxGuidance values carry over."
            ),
            inputs=[
                io.Conditioning.Input("positive", tooltip="The prompt with its references (DreamO, ReferenceLatent, Redux)."),
                io.Clip.Input("clip", tooltip="The text encoder the prompt was encoded with."),
                io.String.Input("neutral_prompt", default="", multiline=False,
                                tooltip="Prompt of the image-only and negative branches; empty as in the paper."),
                io.Conditioning.Input("prompt", optional=True,
                                      tooltip="Only for Redux (StyleModelApply): the text encoding the positive chain "
                                              "starts from, so the Redux tokens after it stay in image_only."),
            ],
            outputs=[io.Conditioning.Output(display_name="image_only"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, positive, clip, neutral_prompt, prompt=None) -> io.NodeOutput:
        if clip is None:
            raise RuntimeError("the CLIP input is empty: load the text encoder with DualCLIPLoader.")
        neutral = clip.encode_from_tokens_scheduled(clip.tokenize(neutral_prompt))
        image_only = with_prompt_replaced(positive, neutral, prompt)
        negative = []
        for tokens, cond in without_references(neutral):
            guidance = positive[0][1].get("guidance")
            negative.append([tokens, {**cond, **({"guidance": guidance} if guidance is not None else {})}])
        return io.NodeOutput(image_only, negative)
