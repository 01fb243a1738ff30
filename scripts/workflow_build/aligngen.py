"""AlignGen workflows: one concept from a reference, and the same with SynCD normalized guidance."""

from __future__ import annotations

from .blocks import (
    ALIGNGEN,
    LOADER_COLOR,
    POSITIVE_COLOR,
    REDUX,
    SIGCLIP,
    custom_sampler_tail,
    flux_loaders,
    ksampler_tail,
    read_me,
)
from .graph import Graph, Node
from .syncd import NORMALIZED_SETTINGS, NORMALIZED_WHAT, SEED_TIP

ALIGNGEN_STEPS = 28  # the paper's sampling steps
ALIGNGEN_GUIDANCE = 3.5  # FLUX.1-dev's default distilled guidance
ALIGNGEN_PROMPT = "a photo of an acoustic guitar on a beach at sunset"
ALIGNGEN_CONCEPT = "acoustic guitar"

ALIGNGEN_WHAT = (
    "Load AlignGen puts the reference-only LoRA on the model and hands S* and the Deviation Extraction Module (DEM) "
    "to AlignGen Conditioning, which writes S* before the concept name, runs the DEM once over the reference's "
    "FLUX.1 Redux tokens (StyleModelLoader + CLIPVisionEncode with crop `none`, as Redux is used) and appends the "
    "reference image's tokens. Only the concept's text tokens may attend to the reference."
)
ALIGNGEN_SETTINGS = [
    f"`concept` must occur in the prompt, as written there (here \"{ALIGNGEN_CONCEPT}\").",
    "One reference of the concept; a subject MASK (1 = keep) can be connected to whiten its background.",
    "The AlignGen file is the one you trained (there are no public AlignGen weights); `lora_strength` 1.0.",
]
ALIGNGEN_LOOK = (
    "An acoustic guitar like the reference (body shape, wood tone, sound hole) on a beach at sunset, as a 1024x1024 "
    "photo, once you have trained AlignGen weights; how close it stays depends on that training."
)


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
    what = ("**AlignGen (cross-modality prior alignment): one concept from one reference**, on FLUX.1-dev. "
            + ALIGNGEN_WHAT + " The negative prompt is a plain CLIPTextEncode.")
    settings = [*ALIGNGEN_SETTINGS,
                f"FluxGuidance {ALIGNGEN_GUIDANCE}, KSampler {ALIGNGEN_STEPS} steps (the paper's), euler / simple, cfg 1.",
                SEED_TIP]
    g = Graph("aligngen_single_concept", "AlignGen: one concept from a reference (FLUX.1-dev + Redux)",
              read_me("aligngen_single_concept", what, settings, ALIGNGEN_LOOK))
    front = aligngen_front(g)
    ksampler_tail(g, front, front["conditioning"][0], ALIGNGEN_STEPS, model=front["aligngen"][0],
                  guidance=ALIGNGEN_GUIDANCE)
    return g


def wf_aligngen_normalized() -> Graph:
    what = ("**AlignGen with SynCD normalized image/text guidance.** " + ALIGNGEN_WHAT + " " + NORMALIZED_WHAT
            + " In the image_only branch the prompt is swapped for the neutral one, so no text token is the "
            "concept's there (S* and the concept name go with the prompt); the reference tokens and their LoRA stay.")
    settings = [*ALIGNGEN_SETTINGS, *NORMALIZED_SETTINGS,
                f"FluxGuidance {ALIGNGEN_GUIDANCE}, {ALIGNGEN_STEPS} steps (the paper's), euler / simple.", SEED_TIP]
    look = ALIGNGEN_LOOK + (" Next to `aligngen_single_concept`, a higher `image_scale` keeps more of the reference, "
                            "a higher `text_scale` more of the scene.")
    g = Graph("aligngen_normalized_guidance", "AlignGen + SynCD normalized image/text guidance",
              read_me("aligngen_normalized_guidance", what, settings, look))
    front = aligngen_front(g)
    guided = g.add("FluxGuidance", None, None, conditioning=front["conditioning"][0], guidance=ALIGNGEN_GUIDANCE)
    branches = g.add("RefCustom_GuidanceBranches", None, None, positive=guided[0], clip=front["clip"][0],
                     neutral_prompt="")
    guider = g.add("RefCustom_NormalizedGuidanceGuider", None, None, model=front["aligngen"][0], positive=guided[0],
                   image_only=branches[0], negative=branches[1], text_scale=2.0, image_scale=1.5,
                   image_scale_increase=1.0, normalize=True)
    custom_sampler_tail(g, front["aligngen"][0], front["vae"][0], guider[0], ALIGNGEN_STEPS)
    return g
