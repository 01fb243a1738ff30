"""AlignGen workflows: one concept from a reference, and the same with SynCD normalized guidance."""

from __future__ import annotations

from .blocks import (
    ALIGNGEN,
    CLIP_L,
    FLUX_UNET,
    FLUX_VAE,
    LOADER_COLOR,
    POSITIVE_COLOR,
    REDUX,
    SIGCLIP,
    T5,
    custom_sampler_tail,
    flux_loaders,
    ksampler_tail,
)
from .graph import Graph, Node
from .syncd import NORMALIZED_SCALES_NOTE

ALIGNGEN_STEPS = 28  # the paper's sampling steps
ALIGNGEN_GUIDANCE = 3.5  # FLUX.1-dev's default distilled guidance
ALIGNGEN_PROMPT = "a photo of an acoustic guitar on a beach at sunset"
ALIGNGEN_CONCEPT = "acoustic guitar"

ALIGNGEN_NOTE = f"""AlignGen (cross-modality prior alignment) on FLUX.1-dev. Load AlignGen puts the reference-only LoRA on the \
model and hands S* and the Deviation Extraction Module (DEM) to AlignGen Conditioning, which writes S* before \
the concept name (the concept field must occur in the prompt: here "{ALIGNGEN_CONCEPT}"), runs the DEM once \
over the reference's FLUX.1 Redux tokens (StyleModelLoader + CLIPVisionEncode with crop "none", as Redux \
is used) and appends the reference image's tokens. Only the concept's text tokens may attend to the \
reference. Use one reference of the concept; a subject MASK (1 = keep) can be connected to whiten the \
background. The negative prompt is a plain CLIPTextEncode.

Files (ComfyUI/models/):
diffusion_models/{FLUX_UNET}, text_encoders/{T5}, text_encoders/{CLIP_L}, vae/{FLUX_VAE}
  FLUX.1-dev (black-forest-labs/FLUX.1-dev, gated) and comfyanonymous/flux_text_encoders.
aligngen/{ALIGNGEN}
  There are no public AlignGen weights: train them with this pack's trainer,
    python -m refcustom.train train --config train/configs/aligngen_flux1_dev.yaml
  (aligngen mode), and copy the exported aligngen_lora.safetensors here (models/loras/ is searched too).
style_models/{REDUX}
  FLUX.1 Redux, black-forest-labs/FLUX.1-Redux-dev (gated: accept the licence first).
clip_vision/{SIGCLIP}
  SigLIP so400m patch14 384, Comfy-Org/sigclip_vision_384.

Reference image: copy custom_nodes/refcustom/workflows/inputs/* into ComfyUI/input/, or load your own."""


def aligngen_front(g: Graph) -> dict[str, Node]:
    """FLUX loaders, Load AlignGen, Redux + SigLIP, the reference and AlignGen Conditioning."""
    unet, clip, vae = flux_loaders(g)
    aligngen = g.add("RefCustom_AlignGenLoader", None, None, model=unet[0], aligngen_file=ALIGNGEN, lora_strength=1.0)
    redux = g.add("StyleModelLoader", "Load FLUX.1 Redux", LOADER_COLOR, style_model_name=REDUX)
    siglip = g.add("CLIPVisionLoader", "Load SigLIP vision", LOADER_COLOR, clip_name=SIGCLIP)
    image = g.add("LoadImage", "Reference image (the concept)", None, image="refcustom_guitar.png")
    vision = g.add("CLIPVisionEncode", None, None, clip_vision=siglip[0], image=image[0], crop="none")
    cond = g.add("RefCustom_AlignGenConditioning", "AlignGen prompt", POSITIVE_COLOR, clip=clip[0],
                 aligngen=aligngen[1], text=ALIGNGEN_PROMPT, concept=ALIGNGEN_CONCEPT, style_model=redux[0],
                 clip_vision_output=vision[0], vae=vae[0], image=image[0], ref_res=512)
    return {"unet": unet, "clip": clip, "vae": vae, "aligngen": aligngen, "conditioning": cond}


def wf_aligngen_single() -> Graph:
    intro = (f"AlignGen, one concept from one reference. FluxGuidance {ALIGNGEN_GUIDANCE}, KSampler "
             f"{ALIGNGEN_STEPS} steps (the paper's), euler / simple, cfg 1.\n\n")
    g = Graph("aligngen_single_concept", "AlignGen: one concept from a reference (FLUX.1-dev + Redux)",
              intro + ALIGNGEN_NOTE)
    front = aligngen_front(g)
    ksampler_tail(g, front, front["conditioning"][0], ALIGNGEN_STEPS, model=front["aligngen"][0],
                  guidance=ALIGNGEN_GUIDANCE)
    return g


def wf_aligngen_normalized() -> Graph:
    intro = (f"AlignGen with SynCD normalized image/text guidance, {ALIGNGEN_STEPS} steps. In the image_only "
             "branch the prompt is swapped for the neutral one, so no text token is the concept's there (S* and "
             "the concept name are gone with the prompt); the reference tokens and their LoRA stay.\n"
             + NORMALIZED_SCALES_NOTE + " Three model passes per step; positive and image_only share one batched "
             "call (their AlignGen payloads batch row by row), so about 2x the time of aligngen_single_concept.\n\n")
    g = Graph("aligngen_normalized_guidance", "AlignGen + SynCD normalized image/text guidance", intro + ALIGNGEN_NOTE)
    front = aligngen_front(g)
    guided = g.add("FluxGuidance", None, None, conditioning=front["conditioning"][0], guidance=ALIGNGEN_GUIDANCE)
    branches = g.add("RefCustom_GuidanceBranches", None, None, positive=guided[0], clip=front["clip"][0],
                     neutral_prompt="")
    guider = g.add("RefCustom_NormalizedGuidanceGuider", None, None, model=front["aligngen"][0], positive=guided[0],
                   image_only=branches[0], negative=branches[1], text_scale=2.0, image_scale=1.5,
                   image_scale_increase=1.0, normalize=True)
    custom_sampler_tail(g, front["aligngen"][0], front["vae"][0], guider[0], ALIGNGEN_STEPS)
    return g
