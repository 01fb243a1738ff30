"""Generate the example workflows in workflows/ from one Python definition each.

Every workflow is written once below as an API-format graph (`Graph`). From it this script writes

- workflows/api/<name>.json   API format, for /prompt and scripts/headless.py;
- workflows/<name>.json       UI (litegraph) format, which ComfyUI's template browser lists and the
                              frontend loads (only top-level *.json there is listed, so api/ stays out);
- workflows/<name>.jpg        the template browser's thumbnail (it asks for <name>.jpg next to the JSON);
- workflows/inputs/*.png      small procedural reference images the LoadImage nodes name.

Widget order, widget defaults and slot types come from the live node definitions: the script starts
a headless ComfyUI with this pack, reads /object_info and stops it. Run it with the host's Python:

    ~/ComfyUI/.venv/bin/python scripts/build_workflows.py            # (re)write everything
    ~/ComfyUI/.venv/bin/python scripts/build_workflows.py --check    # exit 1 if a file would change
    ... --object-info oi.json   # use a saved /object_info instead of starting a server
    ... --save-object-info oi.json

Output is deterministic (sorted keys, fixed ids, fixed layout), so regenerating gives no diff.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
PACK_NAME = "refcustom"

# ----------------------------------------------------------------------------------------------
# Graph definition helpers
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Out:
    """Output `slot` of node `node` (an API link)."""

    node: str
    slot: int


@dataclass
class Node:
    id: str
    class_type: str
    inputs: dict
    title: str | None = None
    color: str | None = None

    def __getitem__(self, slot: int) -> Out:
        return Out(self.id, slot)


@dataclass
class Graph:
    name: str
    description: str
    note: str
    nodes: list[Node] = field(default_factory=list)

    def add(self, class_type: str, title: str | None = None, color: str | None = None, **inputs) -> Node:
        node = Node(str(len(self.nodes) + 1), class_type, inputs, title, color)
        self.nodes.append(node)
        return node


# Official file names (shared/notes/dreamo-reference.md sections 1 and 6; scripts/fetch_weights.py).
FLUX_UNET = "flux1-dev.safetensors"
T5 = "t5xxl_fp16.safetensors"
CLIP_L = "clip_l.safetensors"
FLUX_VAE = "ae.safetensors"
DREAMO = "dreamo.safetensors"
CFG_DISTILL = "dreamo_cfg_distill.safetensors"
SFT = "v1.1/dreamo_sft_lora.safetensors"
DPO = "v1.1/dreamo_dpo_lora.safetensors"
TURBO = "flux-turbo.safetensors"
ALIGNGEN = "aligngen_lora.safetensors"  # our trainer's export (no public AlignGen weights)
REDUX = "flux1-redux-dev.safetensors"
SIGCLIP = "sigclip_vision_patch14_384.safetensors"
SEED = 42
GUIDANCE = 4.5  # v1.1 distilled guidance

# Colours the official templates use for loaders / prompts.
LOADER_COLOR = ("#322", "#533")
POSITIVE_COLOR = ("#232", "#353")
NEGATIVE_COLOR = ("#322", "#533")

MODEL_LINKS = {
    FLUX_UNET: ("https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors", "diffusion_models"),
    T5: ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors", "text_encoders"),
    CLIP_L: ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors", "text_encoders"),
    FLUX_VAE: ("https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors",
               "vae"),
    REDUX: ("https://huggingface.co/black-forest-labs/FLUX.1-Redux-dev/resolve/main/flux1-redux-dev.safetensors",
            "style_models"),
    SIGCLIP: ("https://huggingface.co/Comfy-Org/sigclip_vision_384/resolve/main/sigclip_vision_patch14_384.safetensors",
              "clip_vision"),
}

NOTE_FILES = f"""Files (download into ComfyUI/models/):

diffusion_models/{FLUX_UNET}
  FLUX.1-dev (black-forest-labs/FLUX.1-dev, gated: accept the licence first). fp8 or GGUF FLUX.1-dev work too.
text_encoders/{T5}  and  text_encoders/{CLIP_L}
  comfyanonymous/flux_text_encoders
vae/{FLUX_VAE}
  from black-forest-labs/FLUX.1-dev
dreamo/{DREAMO}
dreamo/{CFG_DISTILL}
dreamo/{SFT}
dreamo/{DPO}
  from ByteDance/DreamO; keep the v1.1/ subfolder (models/dreamo/v1.1/...).
  (models/loras/ is searched too.)
{{turbo}}
Or let the pack fetch them:
  python custom_nodes/refcustom/scripts/fetch_weights.py --models models

Reference images: copy custom_nodes/refcustom/workflows/inputs/* into ComfyUI/input/, or load your own.
"""
TURBO_NOTE = f"""loras/{TURBO}
  alimama-creative/FLUX.1-Turbo-Alpha, file diffusion_pytorch_model.safetensors, renamed.
"""


def flux_loaders(g: Graph, unet_name: str = FLUX_UNET, title: str = "Load FLUX.1-dev") -> tuple[Node, Node, Node]:
    """UNETLoader, DualCLIPLoader (T5-XXL + CLIP-L, flux) and VAELoader: the front of every workflow."""
    unet = g.add("UNETLoader", title, LOADER_COLOR, unet_name=unet_name, weight_dtype="default")
    clip = g.add("DualCLIPLoader", "Load T5-XXL + CLIP-L", LOADER_COLOR,
                 clip_name1=T5, clip_name2=CLIP_L, type="flux", device="default")
    vae = g.add("VAELoader", "Load FLUX VAE", LOADER_COLOR, vae_name=FLUX_VAE)
    return unet, clip, vae


def dreamo_base(g: Graph, turbo: bool = False) -> dict[str, Node]:
    """Loaders shared by every workflow: FLUX, its text encoders and VAE, DreamO (v1.1 defaults)."""
    unet, clip, vae = flux_loaders(g)
    dreamo = g.add(
        "RefCustom_DreamOLoader", None, None,
        model=unet[0],
        dreamo_file=DREAMO, embedding_file="(inside dreamo_file)", dreamo_strength=1.0,
        cfg_distill_lora=CFG_DISTILL, cfg_distill_strength=1.0,
        turbo_lora=TURBO if turbo else "none", turbo_strength=1.0,
        sft_lora=SFT, sft_strength=1.0,
        dpo_lora=DPO, dpo_strength=1.25,
        quality_pos_lora="none", quality_pos_strength=0.15,
        quality_neg_lora="none", quality_neg_strength=-0.8,
    )
    return {"unet": unet, "clip": clip, "vae": vae, "dreamo": dreamo}


def add_references(g: Graph, base: dict[str, Node], cond: Out, refs: list[tuple[str, str, str, int]]) -> Out:
    """Chain DreamO Reference nodes: refs = [(image file, task, title, index)]."""
    for image, task, title, index in refs:
        load = g.add("LoadImage", f"{title} image", None, image=image)
        ref = g.add("RefCustom_DreamOReference", title, None, conditioning=cond, vae=base["vae"][0], image=load[0],
                    task=task, ref_res=512, index=index)
        cond = ref[0]
    return cond


def ksampler_tail(g: Graph, base: dict[str, Node], positive: Out, steps: int, model: Out | None = None,
                  guidance: float = GUIDANCE, batch_size: int = 1) -> None:
    """FluxGuidance (4.5) -> KSampler (cfg 1, empty negative) -> VAEDecode -> SaveImage. model: DreamO's by default."""
    guided = g.add("FluxGuidance", None, None, conditioning=positive, guidance=guidance)
    negative = g.add("CLIPTextEncode", "Negative (empty; unused at cfg 1)", NEGATIVE_COLOR,
                     text="", clip=base["clip"][0])
    latent = g.add("EmptySD3LatentImage", None, None, width=1024, height=1024, batch_size=batch_size)
    sampler = g.add("KSampler", None, None, model=model or base["dreamo"][0], seed=SEED, steps=steps, cfg=1.0,
                    sampler_name="euler", scheduler="simple", positive=guided[0], negative=negative[0],
                    latent_image=latent[0], denoise=1.0)
    decode = g.add("VAEDecode", None, None, samples=sampler[0], vae=base["vae"][0])
    g.add("SaveImage", None, None, images=decode[0], filename_prefix=f"refcustom/{g.name}")


def text(g: Graph, base: dict[str, Node], prompt: str) -> Out:
    return g.add("RefCustom_DreamOTextEncode", "DreamO prompt", POSITIVE_COLOR,
                 clip=base["clip"][0], dreamo=base["dreamo"][1], text=prompt)[0]


def note(body: str, turbo: bool = False) -> str:
    return body.strip() + "\n\n" + NOTE_FILES.replace("{turbo}", TURBO_NOTE if turbo else "")


def wf_ip(name="dreamo_ip", turbo=False, steps=25) -> Graph:
    intro = (
        "DreamO single subject (IP). One reference, task ip: the subject should sit on a plain white "
        "background (connect a background-removal MASK to the DreamO Reference node otherwise). "
        "[ref#1] in the prompt goes right after the subject's name.\n"
    )
    if turbo:
        intro += ("Turbo: the FLUX.1-Turbo-Alpha LoRA is loaded in Load DreamO (turbo_lora), so 12 steps are enough "
                  "(the official app's default).\n")
    else:
        intro += "No turbo LoRA: 25 steps (the official recommendation without turbo). dreamo_turbo does it in 12.\n"
    intro += "v1.1 defaults: cfg-distill 1.0, sft 1.0, dpo 1.25; FluxGuidance 4.5; euler/simple; cfg 1."
    g = Graph(name, "DreamO: one subject reference" + (", turbo LoRA, 12 steps" if turbo else ""), note(intro, turbo))
    base = dreamo_base(g, turbo=turbo)
    cond = text(g, base, "a toy from [ref#1] sitting on a wooden desk, soft light")
    cond = add_references(g, base, cond, [("refcustom_subject.png", "ip", "Reference 1 [ref#1] (ip)", 0)])
    ksampler_tail(g, base, cond, steps)
    return g


def wf_turbo() -> Graph:
    return wf_ip("dreamo_turbo", turbo=True, steps=12)


def wf_id() -> Graph:
    intro = (
        "DreamO identity (ID) with a true negative prompt. Task id expects a face crop: it is centre-cropped "
        "square and resized to 512 (ref_res does not apply). A face-parsing MASK (1 = face) can whiten the rest.\n"
        "True CFG: the DreamO True CFG Guider runs the negative prompt WITHOUT references and without DreamO's "
        "embeddings, as the official pipeline does (pred = neg + cfg * (pos - neg)); cfg 2.0 on every step "
        "(start_step 0, end_step 10000; the window is start_step <= step < end_step, as the official "
        "true_cfg_start_step / true_cfg_end_step). cfg 1.0 switches the negative branch off. The negative keeps "
        "FLUX's default guidance 3.5 (the official neg_guidance); first_step_guidance 0 keeps the positive's "
        "guidance on step 0 too.\n"
        "The image is decoded from SamplerCustomAdvanced's denoised_output.\n"
        "Tip (maintainers): lower FluxGuidance to 2.5-3 if faces look glossy or plastic."
    )
    g = Graph("dreamo_id", "DreamO: identity from a face, true negative prompt (SamplerCustomAdvanced)", note(intro))
    base = dreamo_base(g)
    cond = text(g, base, "a portrait photo of a person from [ref#1] reading a book in a cafe, natural window light")
    cond = add_references(g, base, cond, [("refcustom_face.png", "id", "Reference 1 [ref#1] (id)", 0)])
    guided = g.add("FluxGuidance", None, None, conditioning=cond, guidance=GUIDANCE)
    negative = g.add("CLIPTextEncode", "Negative prompt", NEGATIVE_COLOR,
                     text="blurry, plastic skin, oversaturated", clip=base["clip"][0])
    noise = g.add("RandomNoise", None, None, noise_seed=SEED)
    guider = g.add("RefCustom_TrueCFGGuider", None, None, model=base["dreamo"][0], positive=guided[0],
                   negative=negative[0], cfg=2.0, start_step=0, end_step=10000, first_step_guidance=0.0)
    sampler = g.add("KSamplerSelect", None, None, sampler_name="euler")
    sigmas = g.add("BasicScheduler", None, None, model=base["dreamo"][0], scheduler="simple", steps=25, denoise=1.0)
    latent = g.add("EmptySD3LatentImage", None, None, width=1024, height=1024, batch_size=1)
    sample = g.add("SamplerCustomAdvanced", None, None, noise=noise[0], guider=guider[0], sampler=sampler[0],
                   sigmas=sigmas[0], latent_image=latent[0])
    decode = g.add("VAEDecode", None, None, samples=sample[1], vae=base["vae"][0])  # slot 1 = denoised_output
    g.add("SaveImage", None, None, images=decode[0], filename_prefix="refcustom/dreamo_id")
    return g


def wf_multi() -> Graph:
    intro = (
        "DreamO with three subject references (ip, ip, ip), chained: text -> Reference 1 -> Reference 2 -> "
        "Reference 3. Each node's index (1, 2, 3) is what [ref#1], [ref#2], [ref#3] in the prompt point at; "
        "put each placeholder right after the name of its subject. Up to 9 references can be chained.\n"
        "25 steps without turbo; v1.1 defaults."
    )
    g = Graph("dreamo_multi_reference", "DreamO: three subject references with [ref#k] placeholders", note(intro))
    base = dreamo_base(g)
    cond = text(g, base, "a toy from [ref#1], a mug from [ref#2] and a potted plant from [ref#3] "
                         "on a kitchen table, morning light")
    cond = add_references(g, base, cond, [
        ("refcustom_subject.png", "ip", "Reference 1 [ref#1] (ip)", 1),
        ("refcustom_subject2.png", "ip", "Reference 2 [ref#2] (ip)", 2),
        ("refcustom_subject3.png", "ip", "Reference 3 [ref#3] (ip)", 3),
    ])
    ksampler_tail(g, base, cond, 25)
    return g


def wf_tryon() -> Graph:
    intro = (
        "DreamO virtual try-on: reference 1 is the person (task ip), reference 2 the garment (task try-on), "
        "both on plain white backgrounds. The prompt names them with [ref#1] and [ref#2].\n"
        "25 steps without turbo; v1.1 defaults."
    )
    g = Graph("dreamo_tryon", "DreamO: try-on (person + garment)", note(intro))
    base = dreamo_base(g)
    cond = text(g, base, "a person from [ref#1] wearing the clothes from [ref#2], full body, street")
    cond = add_references(g, base, cond, [
        ("refcustom_person.png", "ip", "Reference 1 [ref#1] person (ip)", 1),
        ("refcustom_garment.png", "try-on", "Reference 2 [ref#2] garment (try-on)", 2),
    ])
    ksampler_tail(g, base, cond, 25)
    return g


def wf_style() -> Graph:
    intro = (
        "DreamO style reference (task style): the whole image is used, no background handling, no mask. "
        "The prompt must start with \"generate a same style image.\" (as in the official app). "
        "Officially, style is not combined with other references in this DreamO version.\n"
        "25 steps without turbo; v1.1 defaults."
    )
    g = Graph("dreamo_style", "DreamO: style reference", note(intro))
    base = dreamo_base(g)
    cond = text(g, base, "generate a same style image. A rooster wearing overalls.")
    cond = add_references(g, base, cond, [("refcustom_style.png", "style", "Reference 1 (style)", 0)])
    ksampler_tail(g, base, cond, 25)
    return g


def custom_sampler_tail(g: Graph, model: Out, vae: Out, guider: Out, steps: int) -> None:
    """RandomNoise + KSamplerSelect euler + BasicScheduler simple -> SamplerCustomAdvanced -> decode -> save."""
    noise = g.add("RandomNoise", None, None, noise_seed=SEED)
    sampler = g.add("KSamplerSelect", None, None, sampler_name="euler")
    sigmas = g.add("BasicScheduler", None, None, model=model, scheduler="simple", steps=steps, denoise=1.0)
    latent = g.add("EmptySD3LatentImage", None, None, width=1024, height=1024, batch_size=1)
    sample = g.add("SamplerCustomAdvanced", None, None, noise=noise[0], guider=guider, sampler=sampler[0],
                   sigmas=sigmas[0], latent_image=latent[0])
    decode = g.add("VAEDecode", None, None, samples=sample[1], vae=vae)  # slot 1 = denoised_output
    g.add("SaveImage", None, None, images=decode[0], filename_prefix=f"refcustom/{g.name}")


NORMALIZED_SCALES_NOTE = (
    "Normalized guidance (SynCD): Guidance Branches turns the one positive (prompt + references) into image_only "
    "(same references, empty prompt) and negative (empty prompt, no references). The guider combines the three "
    "predictions per step as image_only + s_I (image_only - negative) + s_T (positive - image_only), after scaling "
    "the larger of the two directions down to the smaller one's norm (per image). s_I ramps from image_scale by "
    "image_scale_increase over sampling. Set normalize off to compare with plain dual guidance.\n"
    "The paper's scales (7.5 / 8 / +5) were for SDXL; guidance-distilled FLUX wants small ones: start near "
    "text 2.0, image 1.5, increase 1.0."
)
NORMALIZED_NOTE = NORMALIZED_SCALES_NOTE + " Three model passes per step (positive and image_only share one batched call)."


def wf_dreamo_normalized() -> Graph:
    intro = "DreamO single subject with SynCD normalized image/text guidance, turbo LoRA, 12 steps.\n" + NORMALIZED_NOTE
    g = Graph("dreamo_normalized_guidance", "DreamO + SynCD normalized image/text guidance", note(intro, turbo=True))
    base = dreamo_base(g, turbo=True)
    cond = text(g, base, "a toy from [ref#1] on a snowy mountain top, dramatic light")
    cond = add_references(g, base, cond, [("refcustom_subject.png", "ip", "Reference 1 [ref#1] (ip)", 0)])
    guided = g.add("FluxGuidance", None, None, conditioning=cond, guidance=GUIDANCE)
    branches = g.add("RefCustom_GuidanceBranches", None, None, positive=guided[0], clip=base["clip"][0],
                     neutral_prompt="")
    guider = g.add("RefCustom_NormalizedGuidanceGuider", None, None, model=base["dreamo"][0], positive=guided[0],
                   image_only=branches[0], negative=branches[1], text_scale=2.0, image_scale=1.5,
                   image_scale_increase=1.0, normalize=True)
    custom_sampler_tail(g, base["dreamo"][0], base["vae"][0], guider[0], 12)
    return g


KONTEXT_UNET = "flux1-kontext-dev.safetensors"


def wf_kontext_normalized() -> Graph:
    intro = (
        "FLUX.1 Kontext editing with SynCD normalized guidance: core ReferenceLatent carries the input image, and "
        "Guidance Branches / the normalized guider balance following the image against following the instruction. "
        "No DreamO here: the guider works with any reference mechanism on the conditioning.\n" + NORMALIZED_NOTE +
        f"\n\nFiles: diffusion_models/{KONTEXT_UNET} (black-forest-labs/FLUX.1-Kontext-dev), text_encoders/{T5}, "
        f"text_encoders/{CLIP_L}, vae/{FLUX_VAE}. Input image: copy custom_nodes/refcustom/workflows/inputs/* into "
        "ComfyUI/input/."
    )
    g = Graph("kontext_normalized_guidance", "FLUX Kontext + SynCD normalized image/text guidance", intro)
    unet, clip, vae = flux_loaders(g, KONTEXT_UNET, "Load FLUX.1 Kontext")
    prompt = g.add("CLIPTextEncode", "Instruction", POSITIVE_COLOR, clip=clip[0],
                   text="put the toy on a sunny beach, keep its colours and shape")
    image = g.add("LoadImage", "Image to edit", None, image="refcustom_subject.png")
    scaled = g.add("FluxKontextImageScale", None, None, image=image[0])
    encoded = g.add("VAEEncode", None, None, pixels=scaled[0], vae=vae[0])
    reference = g.add("ReferenceLatent", None, None, conditioning=prompt[0], latent=encoded[0])
    guided = g.add("FluxGuidance", None, None, conditioning=reference[0], guidance=2.5)
    branches = g.add("RefCustom_GuidanceBranches", None, None, positive=guided[0], clip=clip[0], neutral_prompt="")
    guider = g.add("RefCustom_NormalizedGuidanceGuider", None, None, model=unet[0], positive=guided[0],
                   image_only=branches[0], negative=branches[1], text_scale=2.0, image_scale=1.5,
                   image_scale_increase=1.0, normalize=True)
    custom_sampler_tail(g, unet[0], vae[0], guider[0], 20)
    return g


def wf_consistent_batch() -> Graph:
    intro = (
        "SynCD Masked Shared Attention: a batch of 4 images from one prompt whose subject stays the same. Each "
        "image's image tokens also attend to the other images' tokens inside the mask (never their text or "
        "background); the first step shares everything. The mask here is a centred box where the subject should "
        "stand, the same for all 4 images (built from core mask nodes and repeated to the batch); a segmentation "
        "mask per image works better when you have one (any pixel size, one per image, in batch order).\n"
        "Experimental (issue 5): masks estimated from the prompt's cross-attention and reference mode come later.\n\n"
        f"Files: diffusion_models/{FLUX_UNET}, text_encoders/{T5}, text_encoders/{CLIP_L}, vae/{FLUX_VAE}."
    )
    g = Graph("syncd_consistent_batch", "SynCD Masked Shared Attention: a consistent batch of 4", intro)
    unet, clip, vae = flux_loaders(g)
    background = g.add("SolidMask", "Mask: background", None, value=0.0, width=1024, height=1024)
    box = g.add("SolidMask", "Mask: subject box", None, value=1.0, width=512, height=640)
    mask = g.add("MaskComposite", "Centred subject box", None, destination=background[0], source=box[0], x=256, y=192,
                 operation="add")
    as_image = g.add("MaskToImage", None, None, mask=mask[0])
    repeated = g.add("RepeatImageBatch", "One mask per image (4)", None, image=as_image[0], amount=4)
    masks = g.add("ImageToMask", None, None, image=repeated[0], channel="red")
    shared = g.add("RefCustom_MaskedSharedAttention", None, None, model=unet[0], mask=masks[0], dilation=9,
                   full_shared_steps=1, patch_negative=False)
    prompt = g.add("CLIPTextEncode", "Prompt", POSITIVE_COLOR, clip=clip[0],
                   text="a plush toy rabbit with a red scarf sitting in a sunny garden, photo")
    ksampler_tail(g, {"clip": clip, "vae": vae}, prompt[0], 20, model=shared[0], guidance=3.5, batch_size=4)
    return g


def wf_shared_reference() -> Graph:
    intro = (
        "SynCD reference mode: the reference image is noised to each step's noise level with fresh (seeded) noise, "
        "runs through the same model next to the batch, and each generated image's image tokens also attend to "
        "the reference's tokens (all of them in the first step, then the reference_mask's foreground; without a "
        "mask, the whole reference). Connect a subject mask of the reference (1 = object) to borrow only the "
        "object. Works on plain FLUX as here, and on a DreamO-patched MODEL.\n"
        "Experimental (issue 5).\n\n"
        f"Files: diffusion_models/{FLUX_UNET}, text_encoders/{T5}, text_encoders/{CLIP_L}, vae/{FLUX_VAE}. "
        "Input image: copy custom_nodes/refcustom/workflows/inputs/* into ComfyUI/input/."
    )
    g = Graph("syncd_reference", "SynCD shared-attention reference mode (batch of 2)", intro)
    unet, clip, vae = flux_loaders(g)
    image = g.add("LoadImage", "Reference image", None, image="refcustom_subject.png")
    shared = g.add("RefCustom_SharedAttentionReference", None, None, model=unet[0], vae=vae[0], reference=image[0],
                   dilation=9, full_shared_steps=1, patch_negative=False, noise_seed=0)
    prompt = g.add("CLIPTextEncode", "Prompt", POSITIVE_COLOR, clip=clip[0],
                   text="a toy robot standing on a sunny beach, photo")
    ksampler_tail(g, {"clip": clip, "vae": vae}, prompt[0], 20, model=shared[0], guidance=3.5, batch_size=2)
    return g


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


ALL = [wf_ip, wf_id, wf_multi, wf_tryon, wf_style, wf_turbo, wf_dreamo_normalized, wf_kontext_normalized,
       wf_consistent_batch, wf_shared_reference, wf_aligngen_single, wf_aligngen_normalized]

# ----------------------------------------------------------------------------------------------
# Node definitions (/object_info) -> widgets
# ----------------------------------------------------------------------------------------------

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # virtual nodes: not in /object_info, never in API graphs


def input_type(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def input_options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    return input_type(spec) in WIDGET_TYPES and not input_options(spec).get("forceInput")


def combo_options(spec) -> list:
    return spec[0] if isinstance(spec[0], list) else input_options(spec).get("options", [])


@dataclass
class NodeDef:
    class_type: str
    info: dict

    def ordered_inputs(self) -> list[tuple[str, list, bool]]:
        """(name, spec, optional) in the frontend's order: input_order required, then optional."""
        out = []
        order = self.info.get("input_order") or {k: list(v) for k, v in self.info["input"].items()}
        for section in ("required", "optional"):
            specs = self.info["input"].get(section, {})
            for name in order.get(section, []):
                out.append((name, specs[name], section == "optional"))
        return out

    def widget_values(self, inputs: dict) -> list:
        """widgets_values as the v0.8.0 frontend (1.35) serializes them.

        One value per widget input, in `getOrderedInputSpecs` order (input_order required, then
        optional); a widget with control_after_generate is followed by its control widget ("fixed").
        An image_upload combo makes the Comfy.UploadImage extension add an `upload` input that is in
        no input_order, so it comes last; its button widget serializes as "image".
        """
        values, upload = [], False
        for name, spec, optional in self.ordered_inputs():
            if not is_widget(spec):
                continue
            values.append(inputs[name])
            if input_options(spec).get("control_after_generate"):
                values.append("fixed")
            upload = upload or (not optional and bool(input_options(spec).get("image_upload")))
        if upload:
            values.append("image")
        return values

    def widget_count(self) -> int:
        n, upload = 0, False
        for _, spec, optional in self.ordered_inputs():
            if is_widget(spec):
                n += 1 + bool(input_options(spec).get("control_after_generate"))
                upload = upload or (not optional and bool(input_options(spec).get("image_upload")))
        return n + upload

    def slot_inputs(self) -> list[tuple[str, str, bool]]:
        return [(n, input_type(s), o) for n, s, o in self.ordered_inputs() if not is_widget(s)]

    def outputs(self) -> list[tuple[str, str]]:
        return list(zip(self.info["output_name"], self.info["output"], strict=True))


def complete_inputs(node: Node, d: NodeDef) -> dict:
    """API inputs with every widget present (defaults filled in), validated against the definition."""
    known = {name for name, _, _ in d.ordered_inputs()}
    unknown = set(node.inputs) - known
    if unknown:
        raise ValueError(f"{node.class_type} (node {node.id}) has no input(s) {sorted(unknown)}")
    out = {}
    for name, spec, optional in d.ordered_inputs():
        if name in node.inputs:
            value = node.inputs[name]
        elif is_widget(spec) and "default" in input_options(spec):
            value = input_options(spec)["default"]
        elif optional:
            continue
        else:
            raise ValueError(f"{node.class_type} (node {node.id}) needs a value for {name}")
        if isinstance(value, Out):
            if is_widget(spec):
                raise ValueError(f"{node.class_type}.{name} is a widget; this generator does not link widgets")
        elif not is_widget(spec):
            raise ValueError(f"{node.class_type}.{name} is a {input_type(spec)} slot and needs a link")
        elif input_type(spec) == "COMBO":
            options = combo_options(spec)
            # File lists are empty when the server has no models; static lists must contain the value.
            if options and value not in options and name not in FILE_WIDGETS.get(node.class_type, ()):
                raise ValueError(f"{node.class_type}.{name} = {value!r} is not one of {options}")
        out[name] = value
    return out


# Combos listing files: their options depend on what is in models/ or input/, so values are not checked.
FILE_WIDGETS = {
    "UNETLoader": ("unet_name",),
    "DualCLIPLoader": ("clip_name1", "clip_name2"),
    "VAELoader": ("vae_name",),
    "LoadImage": ("image",),
    "RefCustom_DreamOLoader": ("dreamo_file", "embedding_file", "cfg_distill_lora", "turbo_lora", "sft_lora",
                               "dpo_lora", "quality_pos_lora", "quality_neg_lora"),
    "RefCustom_AlignGenLoader": ("aligngen_file",),
    "StyleModelLoader": ("style_model_name",),
    "CLIPVisionLoader": ("clip_name",),
}

# ----------------------------------------------------------------------------------------------
# API and UI formats
# ----------------------------------------------------------------------------------------------


def api_graph(g: Graph, defs: dict[str, NodeDef]) -> dict:
    out = {}
    for node in g.nodes:
        d = defs[node.class_type]
        inputs = {k: ([v.node, v.slot] if isinstance(v, Out) else v) for k, v in complete_inputs(node, d).items()}
        title = node.title or d.info.get("display_name") or node.class_type
        out[node.id] = {"class_type": node.class_type, "inputs": inputs, "_meta": {"title": title}}
    return out


def layout_columns(g: Graph) -> dict[str, int]:
    """Column per node, left to right by graph depth, each node as far right as its consumers allow.

    Depth is the longest path from a source; then, consumers first, every node that feeds others moves
    to just left of its nearest consumer, so loaders, images and prompts sit next to where they are used.
    """
    parents = {n.id: [v.node for v in n.inputs.values() if isinstance(v, Out)] for n in g.nodes}
    children: dict[str, list[str]] = {n.id: [] for n in g.nodes}
    for nid, ps in parents.items():
        for p in ps:
            children[p].append(nid)
    depth = {n.id: topo_depth(n, g) for n in g.nodes}
    for nid in sorted(depth, key=lambda k: (-depth[k], int(k))):
        if children[nid]:
            depth[nid] = min(depth[c] for c in children[nid]) - 1
    shift = min(depth.values())
    return {k: v - shift for k, v in depth.items()}


def node_size(d: NodeDef) -> list[int]:
    """Roughly the size the frontend gives the node: title, slot rows, widget rows."""
    slots = max(len(d.slot_inputs()), len(d.outputs()))
    height = 30 + 22 * slots
    width = 320
    for _, spec, _ in d.ordered_inputs():
        if not is_widget(spec):
            continue
        opts = input_options(spec)
        if input_type(spec) == "STRING" and opts.get("multiline"):
            height += 120
            width = 400
        elif opts.get("image_upload"):
            height += 24 + 24 + 260  # combo, upload button, preview
        else:
            height += 24 * (1 + bool(opts.get("control_after_generate")))
    return [width, height + 10]


COLUMN_WIDTH = 460
NOTE_SIZE = [460, 560]
ROW_GAP = 40
TOP = 0


def ui_graph(g: Graph, defs: dict[str, NodeDef]) -> dict:
    api = api_graph(g, defs)
    columns = layout_columns(g)
    # Links in (target node, target slot) order.
    links = []
    slot_index = {}
    for node in g.nodes:
        d = defs[node.class_type]
        slot_index[node.id] = {name: i for i, (name, _, _) in enumerate(d.slot_inputs())}
    for node in g.nodes:
        d = defs[node.class_type]
        for name, _, _ in d.slot_inputs():
            v = node.inputs.get(name)
            if isinstance(v, Out):
                src_type = defs[g.nodes[int(v.node) - 1].class_type].outputs()[v.slot][1]
                links.append([len(links) + 1, int(v.node), v.slot, int(node.id), slot_index[node.id][name], src_type])

    # Execution order: a topological order (sources first, by id).
    order: dict[str, int] = {}
    ids_by_depth = sorted(g.nodes, key=lambda n: (topo_depth(n, g), int(n.id)))
    for i, n in enumerate(ids_by_depth):
        order[n.id] = i

    # Positions: one column per depth, stacked top to bottom in definition order.
    y_next: dict[int, int] = {}
    nodes_ui = []
    note_id = len(g.nodes) + 1
    for node in g.nodes:
        d = defs[node.class_type]
        col = columns[node.id]
        size = node_size(d)
        y = y_next.get(col, TOP)
        y_next[col] = y + size[1] + ROW_GAP
        inputs_ui = []
        for i, (name, typ, optional) in enumerate(d.slot_inputs()):
            link = next((lk[0] for lk in links if lk[3] == int(node.id) and lk[4] == i), None)
            entry = {"name": name, "type": typ, "link": link}
            if optional:
                entry["shape"] = 7
            inputs_ui.append(entry)
        outputs_ui = []
        for slot, (name, typ) in enumerate(d.outputs()):
            outputs_ui.append({
                "name": name, "type": typ, "slot_index": slot,
                "links": [lk[0] for lk in links if lk[1] == int(node.id) and lk[2] == slot],
            })
        entry = {
            "id": int(node.id),
            "type": node.class_type,
            "pos": [col * COLUMN_WIDTH, y],
            "size": size,
            "flags": {},
            "order": order[node.id],
            "mode": 0,
            "inputs": inputs_ui,
            "outputs": outputs_ui,
            "properties": {"Node name for S&R": node.class_type},
            "widgets_values": d.widget_values(api[node.id]["inputs"]),
        }
        if node.title:
            entry["title"] = node.title
        if node.color:
            entry["color"], entry["bgcolor"] = node.color
        models = [
            {"name": v, "url": MODEL_LINKS[v][0], "directory": MODEL_LINKS[v][1]}
            for k, v in sorted(node.inputs.items()) if isinstance(v, str) and v in MODEL_LINKS
        ]
        if models:
            entry["properties"]["models"] = models
        nodes_ui.append(entry)

    nodes_ui.append({
        "id": note_id, "type": "Note", "pos": [-COLUMN_WIDTH - 40, TOP], "size": NOTE_SIZE,
        "flags": {}, "order": len(g.nodes), "mode": 0, "inputs": [], "outputs": [],
        "title": "Read me: files and settings", "properties": {}, "widgets_values": [g.note],
        "color": "#432", "bgcolor": "#653",
    })
    width = (max(columns.values()) + 1) * COLUMN_WIDTH
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/refcustom/workflows/{g.name}")),
        "revision": 0,
        "last_node_id": note_id,
        "last_link_id": len(links),
        "nodes": nodes_ui,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {
            "ds": {"scale": round(1600 / (width + COLUMN_WIDTH + 200), 3), "offset": [COLUMN_WIDTH + 140, 60]},
            "refcustom": {"description": g.description, "generator": "scripts/build_workflows.py"},
        },
        "version": 0.4,
    }


def topo_depth(node: Node, g: Graph) -> int:
    """Longest path from a source: a valid topological key for the litegraph `order` field."""
    parents = {n.id: [v.node for v in n.inputs.values() if isinstance(v, Out)] for n in g.nodes}
    memo: dict[str, int] = {}

    def dep(nid: str) -> int:
        if nid not in memo:
            memo[nid] = 1 + max((dep(p) for p in parents[nid]), default=-1)
        return memo[nid]

    return dep(node.id)


# ----------------------------------------------------------------------------------------------
# Checks of the UI format against /object_info
# ----------------------------------------------------------------------------------------------


def check_ui(ui: dict, object_info: dict) -> list[str]:
    """Problems in a UI workflow: unknown types, dangling or mistyped links, widget counts."""
    problems = []
    links = {lk[0]: lk for lk in ui["links"]}
    nodes = {n["id"]: n for n in ui["nodes"]}
    if len(links) != len(ui["links"]):
        problems.append("duplicate link ids")
    if ui["last_node_id"] < max(nodes) or ui["last_link_id"] < max(links, default=0):
        problems.append("last_node_id / last_link_id too small")
    for n in ui["nodes"]:
        t = n["type"]
        if t in FRONTEND_ONLY:
            continue
        if t not in object_info:
            problems.append(f"node {n['id']}: type {t} not in /object_info")
            continue
        d = NodeDef(t, object_info[t])
        expected_inputs = d.slot_inputs()
        if [(i["name"], i["type"]) for i in n["inputs"]] != [(a, b) for a, b, _ in expected_inputs]:
            problems.append(f"node {n['id']} {t}: inputs {n['inputs']} != {expected_inputs}")
        for slot, i in enumerate(n["inputs"]):
            if i["link"] is None:
                if not expected_inputs[slot][2]:
                    problems.append(f"node {n['id']} {t}: required input {i['name']} unconnected")
                continue
            lk = links.get(i["link"])
            if lk is None:
                problems.append(f"node {n['id']} {t}: input {i['name']} names missing link {i['link']}")
                continue
            _, src, src_slot, dst, dst_slot, typ = lk
            src_node = nodes.get(src)
            if dst != n["id"] or dst_slot != slot:
                problems.append(f"link {lk[0]} target {dst}:{dst_slot} != node {n['id']} slot {slot}")
            if src_node is None or src_slot >= len(src_node["outputs"]):
                problems.append(f"link {lk[0]}: source {src}:{src_slot} missing")
                continue
            if lk[0] not in (src_node["outputs"][src_slot]["links"] or []):
                problems.append(f"link {lk[0]} missing from node {src} output {src_slot} links")
            src_type = src_node["outputs"][src_slot]["type"]
            if not (src_type == typ == i["type"]):
                problems.append(f"link {lk[0]}: type {src_type} -> {i['type']} (link says {typ})")
        outs = d.outputs()
        if [(o["name"], o["type"]) for o in n["outputs"]] != outs:
            problems.append(f"node {n['id']} {t}: outputs differ from /object_info {outs}")
        for slot, o in enumerate(n["outputs"]):
            for lid in o["links"] or []:
                lk = links.get(lid)
                if lk is None or lk[1] != n["id"] or lk[2] != slot:
                    problems.append(f"node {n['id']} {t}: output {o['name']} lists link {lid} that is not its own")
        if len(n["widgets_values"]) != d.widget_count():
            problems.append(f"node {n['id']} {t}: {len(n['widgets_values'])} widgets_values, expected {d.widget_count()}")
    referenced = {i["link"] for n in ui["nodes"] for i in n["inputs"] if i["link"] is not None}
    if referenced != set(links):
        problems.append(f"links not used by any input: {sorted(set(links) - referenced)}")
    return problems


def check_api(api: dict, object_info: dict) -> list[str]:
    problems = []
    for nid, node in api.items():
        t = node["class_type"]
        if t not in object_info:
            problems.append(f"{nid}: {t} not in /object_info")
            continue
        d = NodeDef(t, object_info[t])
        specs = {name: spec for name, spec, _ in d.ordered_inputs()}
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                src = api.get(value[0])
                if src is None:
                    problems.append(f"{nid}.{name}: link to missing node {value[0]}")
                    continue
                src_type = NodeDef(src["class_type"], object_info[src["class_type"]]).outputs()[value[1]][1]
                if src_type != input_type(specs[name]):
                    problems.append(f"{nid}.{name}: {src_type} into {input_type(specs[name])}")
    return problems


# ----------------------------------------------------------------------------------------------
# Reference images and thumbnails (procedural, PIL)
# ----------------------------------------------------------------------------------------------


def make_inputs() -> dict[str, "Image.Image"]:  # noqa: F821
    from PIL import Image, ImageDraw

    images = {}

    # Subject: a toy robot on white.
    im = Image.new("RGB", (384, 384), "white")
    d = ImageDraw.Draw(im)
    d.rectangle([182, 40, 202, 78], fill=(90, 90, 100))
    d.ellipse([176, 24, 208, 56], fill=(240, 200, 40))
    d.rounded_rectangle([122, 70, 262, 160], 24, fill=(210, 50, 45), outline=(120, 20, 20), width=4)
    d.ellipse([145, 95, 180, 130], fill="white", outline=(40, 40, 40), width=3)
    d.ellipse([204, 95, 239, 130], fill="white", outline=(40, 40, 40), width=3)
    d.ellipse([156, 106, 170, 120], fill=(20, 60, 160))
    d.ellipse([215, 106, 229, 120], fill=(20, 60, 160))
    d.rounded_rectangle([108, 168, 276, 300], 20, fill=(40, 110, 200), outline=(20, 50, 110), width=4)
    d.rectangle([160, 200, 224, 250], fill=(250, 220, 60))
    for x in (172, 192, 212):
        d.ellipse([x - 6, 216, x + 6, 228], fill=(200, 40, 40))
    d.rounded_rectangle([64, 178, 100, 280], 14, fill=(210, 50, 45))
    d.rounded_rectangle([284, 178, 320, 280], 14, fill=(210, 50, 45))
    d.rounded_rectangle([128, 304, 176, 360], 10, fill=(70, 70, 80))
    d.rounded_rectangle([208, 304, 256, 360], 10, fill=(70, 70, 80))
    images["refcustom_subject.png"] = im

    # Second subject: a teal mug with a pattern, on white.
    im = Image.new("RGB", (384, 384), "white")
    d = ImageDraw.Draw(im)
    d.ellipse([246, 140, 336, 260], outline=(20, 130, 130), width=18)
    d.rounded_rectangle([86, 100, 276, 320], 28, fill=(30, 160, 160), outline=(15, 90, 90), width=4)
    d.ellipse([86, 80, 276, 124], fill=(15, 100, 100), outline=(15, 90, 90), width=4)
    d.ellipse([98, 88, 264, 116], fill=(90, 50, 25))
    for i, y in enumerate(range(150, 300, 40)):
        for x in range(110 + (i % 2) * 20, 260, 40):
            d.ellipse([x, y, x + 16, y + 16], fill=(250, 240, 220))
    images["refcustom_subject2.png"] = im

    # Third subject: a potted plant, on white.
    im = Image.new("RGB", (384, 384), "white")
    d = ImageDraw.Draw(im)
    d.polygon([(122, 250), (262, 250), (242, 360), (142, 360)], fill=(200, 100, 50), outline=(120, 60, 30))
    d.rectangle([112, 236, 272, 256], fill=(180, 85, 40))
    d.line([(192, 240), (192, 120)], fill=(40, 110, 40), width=8)
    for cx, cy, w, h in [(140, 150, 90, 40), (244, 140, 90, 40), (150, 90, 80, 36), (232, 80, 84, 36),
                         (192, 46, 50, 70), (120, 206, 80, 34), (262, 204, 80, 34)]:
        d.ellipse([cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2], fill=(50, 160, 60), outline=(30, 100, 40),
                  width=3)
    images["refcustom_subject3.png"] = im

    # Face-like image: a centred cartoon face on a grey background (task id centre-crops it).
    im = Image.new("RGB", (384, 384), (135, 133, 132))
    d = ImageDraw.Draw(im)
    d.ellipse([92, 40, 292, 250], fill=(70, 45, 30))  # hair
    d.rectangle([162, 260, 222, 340], fill=(228, 184, 150))  # neck
    d.rectangle([80, 330, 304, 384], fill=(60, 80, 140))  # shoulders
    d.ellipse([112, 70, 272, 290], fill=(238, 196, 160), outline=(190, 140, 110), width=2)
    d.ellipse([100, 150, 124, 200], fill=(230, 186, 150))
    d.ellipse([260, 150, 284, 200], fill=(230, 186, 150))
    d.chord([104, 50, 280, 170], 180, 360, fill=(70, 45, 30))  # fringe
    for x in (152, 212):
        d.ellipse([x - 16, 160, x + 16, 180], fill="white")
        d.ellipse([x - 7, 163, x + 7, 177], fill=(70, 100, 60))
        d.ellipse([x - 3, 167, x + 3, 173], fill="black")
        d.line([(x - 18, 148), (x + 16, 144)], fill=(60, 40, 25), width=5)
    d.line([(192, 180), (184, 222), (198, 224)], fill=(180, 130, 100), width=3)
    d.arc([160, 226, 224, 260], 20, 160, fill=(170, 70, 70), width=6)
    images["refcustom_face.png"] = im

    # Garment: a striped t-shirt on white.
    im = Image.new("RGB", (384, 384), "white")
    d = ImageDraw.Draw(im)
    shirt = [(136, 48), (166, 40), (192, 66), (218, 40), (248, 48), (336, 104), (304, 164), (276, 148), (276, 344),
             (108, 344), (108, 148), (80, 164), (48, 104)]
    d.polygon(shirt, fill=(245, 245, 245), outline=(40, 40, 60))
    stripes = Image.new("L", (384, 384), 0)
    sd = ImageDraw.Draw(stripes)
    sd.polygon(shirt, fill=255)
    layer = Image.new("RGB", (384, 384), (30, 60, 150))
    mask = Image.new("L", (384, 384), 0)
    md = ImageDraw.Draw(mask)
    for y in range(70, 344, 36):
        md.rectangle([0, y, 384, y + 16], fill=255)
    im.paste(layer, (0, 0), Image.composite(mask, Image.new("L", (384, 384), 0), stripes))
    d.polygon(shirt, outline=(40, 40, 60))
    d.arc([164, 30, 220, 84], 0, 180, fill=(40, 40, 60), width=4)
    images["refcustom_garment.png"] = im

    # Person: a standing figure on white (portrait format).
    im = Image.new("RGB", (256, 384), "white")
    d = ImageDraw.Draw(im)
    d.ellipse([100, 18, 156, 80], fill=(226, 180, 146))
    d.chord([96, 12, 160, 64], 180, 360, fill=(40, 30, 25))
    d.rectangle([118, 78, 138, 92], fill=(226, 180, 146))
    d.rounded_rectangle([86, 90, 170, 210], 16, fill=(200, 200, 190))
    d.rounded_rectangle([62, 96, 86, 200], 10, fill=(200, 200, 190))
    d.rounded_rectangle([170, 96, 194, 200], 10, fill=(200, 200, 190))
    d.ellipse([62, 196, 86, 218], fill=(226, 180, 146))
    d.ellipse([170, 196, 194, 218], fill=(226, 180, 146))
    d.rectangle([90, 206, 126, 350], fill=(50, 60, 90))
    d.rectangle([130, 206, 166, 350], fill=(50, 60, 90))
    d.rounded_rectangle([84, 346, 128, 366], 8, fill=(30, 30, 30))
    d.rounded_rectangle([128, 346, 172, 366], 8, fill=(30, 30, 30))
    images["refcustom_person.png"] = im

    # Style: a colourful abstract pattern (concentric rings, stripes, dots).
    im = Image.new("RGB", (384, 384), (250, 235, 200))
    d = ImageDraw.Draw(im)
    palette = [(230, 57, 70), (241, 160, 40), (42, 157, 143), (38, 70, 83), (233, 196, 106), (120, 60, 160)]
    for i in range(0, 384 + 384, 32):
        d.line([(i, 0), (i - 384, 384)], fill=palette[(i // 32) % len(palette)], width=10)
    for k, (cx, cy) in enumerate([(96, 96), (288, 120), (150, 280), (310, 310)]):
        for r in range(90, 0, -15):
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=palette[(k + r // 15) % len(palette)],
                      outline=(20, 20, 20), width=2)
    for x in range(16, 384, 48):
        for y in range(16, 384, 48):
            d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(255, 255, 255), outline=(20, 20, 20))
    images["refcustom_style.png"] = im

    # AlignGen concept: an acoustic guitar on white (body, sound hole, bridge, neck, head, strings).
    im = Image.new("RGB", (384, 384), "white")
    d = ImageDraw.Draw(im)
    wood, dark = (196, 132, 62), (110, 62, 24)
    d.ellipse([96, 196, 288, 364], fill=wood, outline=dark, width=4)  # lower bout
    d.ellipse([120, 120, 264, 250], fill=wood, outline=dark, width=4)  # upper bout
    d.rectangle([130, 200, 254, 236], fill=wood)  # waist, hiding the inner outlines
    d.ellipse([164, 196, 220, 252], fill=(40, 25, 15), outline=dark, width=3)  # sound hole
    d.rectangle([160, 300, 224, 314], fill=(60, 35, 18))  # bridge
    d.rectangle([180, 26, 204, 200], fill=(95, 55, 25))  # neck
    for y in range(46, 196, 18):
        d.line([(180, y), (204, y)], fill=(210, 210, 210), width=2)  # frets
    d.rounded_rectangle([172, 4, 212, 40], 6, fill=(70, 40, 20))  # head
    for x in (178, 206):
        for y in (12, 22, 32):
            d.ellipse([x - 9 if x < 192 else x + 3, y - 3, x - 3 if x < 192 else x + 9, y + 3], fill=(200, 200, 200))
    for x in range(184, 202, 3):
        d.line([(x, 30), (x, 307)], fill=(235, 225, 200), width=1)  # strings
    images["refcustom_guitar.png"] = im
    return images


def wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


def make_thumbnail(g: Graph, inputs: dict) -> "Image.Image":  # noqa: F821
    """A 512x512 card: the reference images the workflow loads, its name and a one-line summary."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("RGB", (512, 512), (32, 36, 44))
    d = ImageDraw.Draw(im)
    refs = [n.inputs["image"] for n in g.nodes if n.class_type == "LoadImage"]
    tile = 200 if len(refs) <= 2 else 150
    gap = 16
    total = len(refs) * tile + (len(refs) - 1) * gap
    x = (512 - total) // 2
    for name in refs:
        src = inputs[name].copy()
        src.thumbnail((tile, tile))
        frame = Image.new("RGB", (tile, tile), (255, 255, 255))
        frame.paste(src, ((tile - src.width) // 2, (tile - src.height) // 2))
        im.paste(frame, (x, 70))
        x += tile + gap
    d.text((256, 30), g.name, fill=(255, 255, 255), anchor="mm", font=ImageFont.load_default(34))
    y = 70 + tile + 32
    for ln in wrap(g.description, 40):
        d.text((256, y), ln, fill=(230, 230, 230), anchor="mm", font=ImageFont.load_default(20))
        y += 28
    prompt = next(n.inputs["text"] for n in g.nodes
                  if n.class_type in ("RefCustom_DreamOTextEncode", "RefCustom_AlignGenConditioning", "CLIPTextEncode"))
    y += 10
    for ln in wrap(f'"{prompt}"', 48)[:4]:
        d.text((256, y), ln, fill=(150, 200, 150), anchor="mm", font=ImageFont.load_default(16))
        y += 22
    footer = {"kontext": "FLUX.1 Kontext", "syncd": "SynCD (FLUX.1-dev)",
              "aligngen": "AlignGen (FLUX.1-dev)"}.get(g.name.split("_")[0], "DreamO (FLUX.1-dev)")
    d.text((256, 490), "refcustom / " + footer, fill=(140, 150, 170), anchor="mm",
           font=ImageFont.load_default(18))
    return im


# ----------------------------------------------------------------------------------------------
# Server
# ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_comfyui() -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from comfy_host import find_comfyui as find  # noqa: PLC0415
    except ImportError:
        find = None
    finally:
        sys.path.pop(0)
    root = find() if find else None
    if root is None:
        home = Path.home() / "ComfyUI"
        root = home if (home / "main.py").is_file() else None
    if root is None:
        raise SystemExit("ComfyUI not found: set COMFYUI_PATH or use --object-info")
    return Path(root)


def fetch_object_info(comfyui: Path, timeout: float = 180.0) -> dict:
    """Start a bare headless ComfyUI with only this pack, GET /object_info, stop it."""
    python = comfyui / ".venv" / "bin" / "python"
    if not python.exists():
        python = Path(sys.executable)
    with tempfile.TemporaryDirectory(prefix="refcustom_wf_") as tmp:
        base = Path(tmp)
        (base / "custom_nodes").mkdir()
        (base / "custom_nodes" / PACK_NAME).symlink_to(REPO, target_is_directory=True)
        port = free_port()
        cmd = [str(python), str(comfyui / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
               "--base-directory", str(base)]
        log = open(base / "server.log", "w")
        env = {k: v for k, v in os.environ.items() if k != "REFCUSTOM_TEST_FIXTURES"}
        proc = subprocess.Popen(cmd, cwd=str(comfyui), stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.flush()
                    raise SystemExit(f"ComfyUI exited ({proc.returncode}):\n{(base / 'server.log').read_text()[-4000:]}")
                try:
                    with urllib.request.urlopen(url + "/system_stats", timeout=5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"ComfyUI did not answer within {timeout:.0f}s") from None
                    time.sleep(1.0)
            with urllib.request.urlopen(url + "/object_info", timeout=60) as r:
                return json.load(r)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def sorted_json(obj):
    """Dict keys sorted (numerically where all keys are node ids), recursively."""
    if isinstance(obj, dict):
        keys = sorted(obj, key=int) if obj and all(str(k).isdigit() for k in obj) else sorted(obj)
        return {k: sorted_json(obj[k]) for k in keys}
    if isinstance(obj, list):
        return [sorted_json(v) for v in obj]
    return obj


def dump_json(obj) -> bytes:
    return (json.dumps(sorted_json(obj), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def jpg_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85, optimize=True)
    return buf.getvalue()


def build(object_info: dict) -> dict[Path, bytes]:
    """Every generated file: path -> content."""
    needed = {n.class_type for wf in ALL for n in wf().nodes}
    missing = sorted(t for t in needed if t not in object_info)
    if missing:
        raise SystemExit(f"node types missing from /object_info: {missing} (is the pack loading?)")
    defs = {t: NodeDef(t, object_info[t]) for t in needed}
    inputs = make_inputs()
    files: dict[Path, bytes] = {WORKFLOWS / "inputs" / name: png_bytes(im) for name, im in sorted(inputs.items())}
    for wf in ALL:
        g = wf()
        for n in g.nodes:
            if n.class_type == "LoadImage" and n.inputs["image"] not in inputs:
                raise SystemExit(f"{g.name}: LoadImage names {n.inputs['image']}, which is not generated")
        api = api_graph(g, defs)
        ui = ui_graph(g, defs)
        problems = check_api(api, object_info) + check_ui(ui, object_info)
        if problems:
            raise SystemExit(f"{g.name}:\n  " + "\n  ".join(problems))
        files[WORKFLOWS / "api" / f"{g.name}.json"] = dump_json(api)
        files[WORKFLOWS / f"{g.name}.json"] = dump_json(ui)
        files[WORKFLOWS / f"{g.name}.jpg"] = jpg_bytes(make_thumbnail(g, inputs))
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any file would change")
    parser.add_argument("--object-info", type=Path, help="read /object_info from this JSON instead of a server")
    parser.add_argument("--save-object-info", type=Path, help="also save the /object_info used to this file")
    parser.add_argument("--comfyui", type=Path, help="ComfyUI checkout (default: COMFYUI_PATH, parents, ~/ComfyUI)")
    args = parser.parse_args()

    if args.object_info:
        object_info = json.loads(args.object_info.read_text())
    else:
        object_info = fetch_object_info(args.comfyui or find_comfyui())
    if args.save_object_info:
        args.save_object_info.write_bytes(dump_json(object_info))

    files = build(object_info)
    changed = [p for p, data in files.items() if not p.exists() or p.read_bytes() != data]
    if args.check:
        for p in changed:
            print(f"out of date: {p.relative_to(REPO)}")
        return 1 if changed else 0
    for p in changed:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(files[p])
        print(f"wrote {p.relative_to(REPO)}")
    print(f"{len(files)} files, {len(changed)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
