"""DreamO workflows: one subject (plain and turbo), identity with true CFG, three subjects, try-on, style,
and one subject with SynCD normalized guidance."""

from __future__ import annotations

from .blocks import (
    GUIDANCE,
    NEGATIVE_COLOR,
    SEED,
    add_references,
    custom_sampler_tail,
    dreamo_base,
    ksampler_tail,
    read_me,
    text,
)
from .graph import Graph
from .syncd import NORMALIZED_SETTINGS, NORMALIZED_WHAT

V11_DEFAULTS = ("Load DreamO: the v1.1 defaults, cfg-distill 1.0, sft 1.0, dpo 1.25; the quality LoRAs off (`none`). "
                "FluxGuidance 4.5, euler / simple, cfg 1 (FLUX is guidance-distilled: the empty negative is unused).")
NO_TURBO = "25 steps (the official recommendation without turbo); `dreamo_turbo` does one subject in 12."
SEED_TIP = "Seed 42, fixed: change it, or set its control to `randomize`, for other variations."
WHITE_BACKGROUND = ("Reference: the subject alone on a plain white background, or connect a background-removal MASK "
                    "(1 = subject) to DreamO Reference's `mask`. `ref_res` 512 is the official size.")


def wf_ip(name="dreamo_ip", turbo=False, steps=25) -> Graph:
    what = ("**DreamO, one subject reference (task `ip`).** The subject of the reference image in a new scene: "
            "FLUX.1-dev with the DreamO v1.1 adapters (Load DreamO); DreamO Reference adds the image's tokens to "
            "the prompt's conditioning, and `[ref#1]` in the prompt says which words are that subject.")
    settings = [WHITE_BACKGROUND, "Prompt: `[ref#1]` right after the subject's name."]
    if turbo:
        settings.append("Turbo: the FLUX.1-Turbo-Alpha LoRA in Load DreamO (`turbo_lora`), so 12 steps are enough "
                        "(the official app's default); `dreamo_ip` is the 25-step version without it.")
    else:
        settings.append(NO_TURBO)
    settings += [V11_DEFAULTS, SEED_TIP]
    look = ("A 1024x1024 photo of the reference's subject (its shape, colours and markings) sitting on a wooden desk "
            "in soft light; pose, framing and light follow the prompt, not the reference. With the sample image: a "
            "red and blue toy robot. A grey or cluttered reference background leaks into the picture: whiten it or "
            "pass a mask.")
    g = Graph(name, "DreamO: one subject reference" + (", turbo LoRA, 12 steps" if turbo else ""),
              read_me(name, what, settings, look))
    base = dreamo_base(g, turbo=turbo)
    cond = text(g, base, "a toy from [ref#1] sitting on a wooden desk, soft light")
    cond = add_references(g, base, cond, [("refcustom_subject.png", "ip", "Subject [ref#1]", 0)])
    ksampler_tail(g, base, cond, steps)
    return g


def wf_turbo() -> Graph:
    return wf_ip("dreamo_turbo", turbo=True, steps=12)


def wf_id() -> Graph:
    what = ("**DreamO identity (task `id`) with a true negative prompt.** The person of a face crop in a new scene. "
            "The DreamO True CFG Guider runs the negative prompt without references and without DreamO's "
            "embeddings, as the official pipeline does (pred = neg + cfg (pos - neg)); the image is decoded from "
            "SamplerCustomAdvanced's `denoised_output`.")
    settings = [
        "Reference: a face crop. Task `id` centre-crops it square and resizes it to 512 (`ref_res` does not apply); "
        "a face-parsing MASK (1 = face) can whiten the rest.",
        "Negative prompt: what to avoid (here: blurry, plastic skin, oversaturated).",
        "True CFG Guider: `cfg` 2.0 on every step (`start_step` 0, `end_step` 10000; the window is start_step <= "
        "step < end_step, as the official true_cfg_start_step / true_cfg_end_step); cfg 1.0 switches the negative "
        "branch off. The negative keeps FLUX's guidance 3.5 (the official neg_guidance); `first_step_guidance` 0 "
        "keeps the positive's guidance on step 0 too.",
        "FluxGuidance 4.5, 25 steps, euler / simple. Tip (maintainers): lower FluxGuidance to 2.5-3 if faces look "
        "glossy or plastic.",
        SEED_TIP,
    ]
    look = ("A portrait of the same person (face shape, hair, skin tone) reading a book in a cafe by a window, in "
            "natural light. Each step runs the model twice (positive and negative), so it takes about twice as long "
            "as `dreamo_ip`. The sample face is a drawing: expect a drawn-looking person; use a real photo for "
            "likeness.")
    g = Graph("dreamo_id", "DreamO: identity from a face, true negative prompt (SamplerCustomAdvanced)",
              read_me("dreamo_id", what, settings, look))
    base = dreamo_base(g)
    cond = text(g, base, "a portrait photo of a person from [ref#1] reading a book in a cafe, natural window light")
    cond = add_references(g, base, cond, [("refcustom_face.png", "id", "Face [ref#1]", 0)])
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
    what = ("**DreamO with three subject references** (`ip`, `ip`, `ip`), chained: prompt -> Reference 1 -> "
            "Reference 2 -> Reference 3 -> guidance.")
    settings = [
        "Each DreamO Reference's `index` (1, 2, 3) is what `[ref#1]`, `[ref#2]`, `[ref#3]` in the prompt point at: "
        "put each placeholder right after the name of its subject. Up to 9 references can be chained.",
        "Every subject alone on a plain white background (or connect a mask to its DreamO Reference).",
        NO_TURBO, V11_DEFAULTS, SEED_TIP,
    ]
    look = ("One kitchen-table scene in morning light with all three subjects (with the samples: the toy robot, the "
            "teal mug, the potted plant), each keeping its colours and shape. The more subjects, the less detail "
            "each keeps; if two merge or one is missing, check the placeholders and try another seed.")
    g = Graph("dreamo_multi_reference", "DreamO: three subject references with [ref#k] placeholders",
              read_me("dreamo_multi_reference", what, settings, look))
    base = dreamo_base(g)
    cond = text(g, base, "a toy from [ref#1], a mug from [ref#2] and a potted plant from [ref#3] "
                         "on a kitchen table, morning light")
    cond = add_references(g, base, cond, [
        ("refcustom_subject.png", "ip", "Subject 1 [ref#1]", 1),
        ("refcustom_subject2.png", "ip", "Subject 2 [ref#2]", 2),
        ("refcustom_subject3.png", "ip", "Subject 3 [ref#3]", 3),
    ])
    ksampler_tail(g, base, cond, 25)
    return g


def wf_tryon() -> Graph:
    what = ("**DreamO virtual try-on**: reference 1 is the person (task `ip`), reference 2 the garment (task "
            "`try-on`); the picture shows the person wearing it.")
    settings = [
        "Both references on plain white backgrounds: the person full body, the garment alone (laid flat or on a "
        "mannequin).",
        "The prompt names them: `[ref#1]` after the person, `[ref#2]` after the clothes.",
        NO_TURBO, V11_DEFAULTS, SEED_TIP,
    ]
    look = ("The person of reference 1, full body in a street, wearing the garment of reference 2 (with the samples: "
            "a striped t-shirt) with its colours, stripes and cut.")
    g = Graph("dreamo_tryon", "DreamO: try-on (person + garment)", read_me("dreamo_tryon", what, settings, look))
    base = dreamo_base(g)
    cond = text(g, base, "a person from [ref#1] wearing the clothes from [ref#2], full body, street")
    cond = add_references(g, base, cond, [
        ("refcustom_person.png", "ip", "Person [ref#1]", 1),
        ("refcustom_garment.png", "try-on", "Garment [ref#2]", 2),
    ])
    ksampler_tail(g, base, cond, 25)
    return g


def wf_style() -> Graph:
    what = ("**DreamO style reference (task `style`)**: the whole reference image is taken as a style (no background "
            "handling, no mask) and a new subject is drawn in it.")
    settings = [
        "The prompt must start with \"generate a same style image.\" (as in the official app), then says what to "
        "draw.",
        "Officially, style is not combined with other references in this DreamO version.",
        NO_TURBO, V11_DEFAULTS, SEED_TIP,
    ]
    look = ("A rooster wearing overalls, drawn in the reference's style: its palette, strokes and texture, not its "
            "content.")
    g = Graph("dreamo_style", "DreamO: style reference", read_me("dreamo_style", what, settings, look))
    base = dreamo_base(g)
    cond = text(g, base, "generate a same style image. A rooster wearing overalls.")
    cond = add_references(g, base, cond, [("refcustom_style.png", "style", "Style", 0)])
    ksampler_tail(g, base, cond, 25)
    return g


def wf_dreamo_normalized() -> Graph:
    what = ("**DreamO, one subject, with SynCD normalized image/text guidance**, turbo LoRA, 12 steps. "
            + NORMALIZED_WHAT)
    settings = [WHITE_BACKGROUND, "Prompt: `[ref#1]` right after the subject's name.", *NORMALIZED_SETTINGS,
                "Turbo LoRA in Load DreamO, 12 steps; FluxGuidance 4.5.", SEED_TIP]
    look = ("The reference's subject on a snowy mountain top in dramatic light. Next to `dreamo_turbo` (the same "
            "graph with plain guidance), raising `image_scale` keeps more of the subject's details and raising "
            "`text_scale` more of the prompt's scene; large scales over-saturate.")
    g = Graph("dreamo_normalized_guidance", "DreamO + SynCD normalized image/text guidance",
              read_me("dreamo_normalized_guidance", what, settings, look))
    base = dreamo_base(g, turbo=True)
    cond = text(g, base, "a toy from [ref#1] on a snowy mountain top, dramatic light")
    cond = add_references(g, base, cond, [("refcustom_subject.png", "ip", "Subject [ref#1]", 0)])
    guided = g.add("FluxGuidance", None, None, conditioning=cond, guidance=GUIDANCE)
    branches = g.add("RefCustom_GuidanceBranches", None, None, positive=guided[0], clip=base["clip"][0],
                     neutral_prompt="")
    guider = g.add("RefCustom_NormalizedGuidanceGuider", None, None, model=base["dreamo"][0], positive=guided[0],
                   image_only=branches[0], negative=branches[1], text_scale=2.0, image_scale=1.5,
                   image_scale_increase=1.0, normalize=True)
    custom_sampler_tail(g, base["dreamo"][0], base["vae"][0], guider[0], 12)
    return g
