"""DreamO's true CFG as a GUIDER: the negative branch sees no references and no DreamO embeddings.

The official pipeline (DreamOPipeline.__call__, true_cfg) runs the negative prompt on the noise
tokens alone: pred = neg + s * (pos - neg), only for steps inside [start, end). Kontext-style graphs
often build the negative from the positive (ConditioningZeroOut keeps its reference latents); this
guider strips every reference from the negative so the branch is the official one whatever is wired.
"""

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from .conditioning_edit import without_references


class TrueNegativeCFGGuider(comfy.samplers.CFGGuider):
    def set_cfg(self, cfg: float, start_percent: float = 0.0, end_percent: float = 1.0):
        self.cfg = cfg
        self.start_percent = start_percent
        self.end_percent = end_percent

    def set_conds(self, positive, negative):
        self.inner_set_conds({"positive": positive, "negative": without_references(negative)})

    def _cfg_active(self, timestep) -> bool:
        if self.cfg == 1.0:
            return False
        sampling = self.model_patcher.get_model_object("model_sampling")
        sigma = float(timestep.max())
        # percent 0 is the start of sampling (highest sigma); compare with a little slack for float noise.
        high = float(sampling.percent_to_sigma(self.start_percent))
        low = float(sampling.percent_to_sigma(self.end_percent))
        return low - 1e-6 < sigma <= high + 1e-6

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        positive = self.conds.get("positive")
        if self._cfg_active(timestep):
            negative = self.conds.get("negative")
            uncond_pred, cond_pred = comfy.samplers.calc_cond_batch(
                self.inner_model, [negative, positive], x, timestep, model_options
            )
            return comfy.samplers.cfg_function(
                self.inner_model, cond_pred, uncond_pred, self.cfg, x, timestep,
                model_options=model_options, cond=positive, uncond=negative,
            )
        (cond_pred,) = comfy.samplers.calc_cond_batch(self.inner_model, [positive], x, timestep, model_options)
        return comfy.samplers.cfg_function(
            self.inner_model, cond_pred, cond_pred, 1.0, x, timestep,
            model_options=model_options, cond=positive, uncond=None,
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
                "runs without references and without DreamO's embeddings (they are stripped from it). "
                "cfg 1 runs the positive only."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The FLUX model with DreamO loaded (Load DreamO (FLUX))."),
                io.Conditioning.Input("positive", tooltip="Prompt with DreamO references."),
                io.Conditioning.Input("negative", tooltip="Negative prompt; any references on it are removed."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="True CFG scale; 1 disables the negative branch (the cfg-distill LoRA makes it optional)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of sampling where true CFG starts (0 = first step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of sampling where true CFG ends (1 = last step)."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, start_percent, end_percent) -> io.NodeOutput:
        if start_percent > end_percent:
            raise ValueError(f"start_percent ({start_percent}) must not exceed end_percent ({end_percent}).")
        guider = TrueNegativeCFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg, start_percent, end_percent)
        return io.NodeOutput(guider)
