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
    note,
    text,
)
from .graph import Graph
from .syncd import NORMALIZED_NOTE


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
