"""What the workflows share: official file names, colours, the read-me note, loader fronts and sampler tails."""

from __future__ import annotations

import weights_table  # scripts/weights_table.py: scripts/ is sys.path[0] (build_workflows.py is run as a command)

from .graph import Graph, Node, Out

# Official file names (shared/notes/dreamo-reference.md sections 1 and 6; scripts/weights_table.py).
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

# The UI workflows' "models" lists (the frontend's missing-model check and download links): the table's sources.
MODEL_LINKS = {w.name: (w.url, w.folder) for w in weights_table.WEIGHTS if w.url}
# Said once per repository in the files list.
REPO_TIPS = {
    "black-forest-labs/FLUX.1-dev": "fp8 or GGUF FLUX.1-dev work too.",
    "ByteDance/DreamO": "Keep the `v1.1/` subfolder (`models/dreamo/v1.1/...`); `models/loras/` is searched too.",
    None: "`models/loras/` is searched too.",
}
INPUT_IMAGES = ("**Input images.** The LoadImage nodes name small drawn samples: copy "
                "`custom_nodes/refcustom/workflows/inputs/*` into `ComfyUI/input/`, or load your own photos.")


def files_markdown(workflow: str) -> str:
    """The model-files part of a workflow's note, read from scripts/weights_table.py (what the fetcher and the
    loaders' download links read, so they cannot drift): each file's place under models/ and approximate
    size, grouped by source repository (gated licences and renamed files said), then the fetcher's command."""
    by_repo: dict[str | None, list] = {}
    for w in weights_table.for_workflows([workflow]):
        by_repo.setdefault(w.repo, []).append(w)
    lines = ["**Model files** (into `ComfyUI/models/`; sizes approximate):", ""]
    for repo, files in by_repo.items():
        if repo is None:
            head = f"- no public weights: train them (`{weights_table.TRAIN_ALIGNGEN}`, aligngen mode) and copy the export"
        else:
            gated = (", **gated**: accept the licence on that page and log in (`hf auth login`) first"
                     if files[0].gated else "")
            head = f"- from [{repo}]({files[0].page}){gated}"
        tip = REPO_TIPS.get(repo)
        lines.append(head + (f". {tip}" if tip else ""))
        for w in files:
            renamed = f", the repo's `{w.path}` renamed" if w.path and w.path != w.name else ""
            size = f" {w.size_label}" if w.approx_mb else ""
            lines.append(f"  - `{w.relpath}`{size}{renamed}")
    lines += ["", "Or let the pack fetch them with ComfyUI's Python (resumes; `--dry-run` lists sizes):", "",
              f"```\npython custom_nodes/refcustom/scripts/fetch_weights.py --workflow {workflow}\n```"]
    return "\n".join(lines)


def read_me(workflow: str, what: str, settings: list[str], look: str, input_images: bool = True) -> str:
    """A workflow's read-me note in Markdown (a MarkdownNote, as in the core templates): what it does, the
    settings that matter, what to expect, then the model files from the weights table."""
    parts = [what.strip(), "**Settings that matter**", "\n".join(f"- {s}" for s in settings),
             f"**What to expect.** {look.strip()}", files_markdown(workflow)]
    if input_images:
        parts.append(INPUT_IMAGES)
    return "\n\n".join(parts) + "\n"


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
    """Chain DreamO Reference nodes: refs = [(image file, task, label, index)]; titles '<label> image' and
    '<label> (<task>)'."""
    for image, task, label, index in refs:
        load = g.add("LoadImage", f"{label} image", None, image=image)
        ref = g.add("RefCustom_DreamOReference", f"{label} ({task})", None, conditioning=cond, vae=base["vae"][0],
                    image=load[0],
                    task=task, ref_res=512, index=index)
        cond = ref[0]
    return cond


def ksampler_tail(g: Graph, base: dict[str, Node], positive: Out, steps: int, model: Out | None = None,
                  guidance: float = GUIDANCE, batch_size: int = 1) -> None:
    """FluxGuidance (4.5) -> KSampler (cfg 1, empty negative) -> VAEDecode -> SaveImage. model: DreamO's by default."""
    guided = g.add("FluxGuidance", None, None, conditioning=positive, guidance=guidance)
    negative = g.add("CLIPTextEncode", "Negative (empty; unused at cfg 1)", NEGATIVE_COLOR, role="guidance",
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
