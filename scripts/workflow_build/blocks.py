"""What the workflows share: official file names, colours, the files note, loader fronts and sampler tails."""

from __future__ import annotations

from .graph import Graph, Node, Out

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
