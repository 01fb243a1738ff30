"""Does DreamO training put the reference's object at the masked place, and what does L_route change?

A functional training benchmark on the synthetic shapes task (train/synthetic.py): every target
holds 1-2 flat palette-coloured shapes whose references, masks and exact colours are known. Three
phases, all on CPU:

1. A base that denoises (bench-only; cached as <workdir>/tiny-flux-pretrained, reused by a rerun with
   the same settings). The tiny FLUX of train/tiny_model.py is random: its transformer cannot denoise
   and its VAE carries FLUX's shift/scale, which leave these latents at variance 0.017 (the target is
   ~2% of the noise). The copy gets the VAE shift/scale that normalise the dataset's latents (as
   FLUX's were chosen; --no-vae-calibration keeps them), and its transformer is fully fine-tuned
   (every parameter, AdamW lr 2e-3, warm-up + cosine, batch 8, 3000 steps) with plain flow matching
   on the targets and their plain prompts (placeholders removed, no reference), with the trainer's
   components (load_flux, PromptEncoder, encode_latents, pack, train.losses). Printed: its diff loss
   before/after on every record with fixed draws, and the trivial predictor's (v = 0: 1 + E[x0^2]).
2. DreamO with the real trainer on that base, twice from the same seed and LoRA init: without the
   routing loss (lambda_route = 0) and with it (lambda_route = 1); lambda_holder = 0.1 in both.
3. Measured before training (a Trainer built, step 0) and after each run:
   - evaluate(): mean loss terms (diff, route, holder) on --eval-batches batches of the epoch-0 plan
     with fixed noise. L_route is computed for the run trained without it too (only measured there);
   - generation in LATENT space (independent of the random VAE): each evaluation record is generated
     with Trainer.sample's Euler loop (--sample-steps, fixed seed per record) returning the latent,
     and scored against the target's latent, with the mask area-pooled to the latent grid (8 px a
     latent pixel): lat_in, the MSE inside each reference's mask (mean over the shapes), lat_out, the
     MSE outside every mask; for two-shape records own>exch, the fraction of shapes whose generated
     latent is closer inside the mask to the target than to the "exchanged" target (the two shapes'
     kinds and colours swapped between the places; 0.5 = chance), swap_delta, lat_in when the two
     references exchange their slots in the conditioning minus lat_in unswapped (> 0: the model takes
     the reference's object at the reference's place), swap_follows, the fraction of shapes whose
     swapped generation is closer to the exchanged target than to the target; attn_in, the mass of
     the reference->image attention inside the reference's mask (softmax over image tokens of the
     mean-over-reference-token logits, mean over heads, the routing layers [0, 1] and the steps);
   - color_err / mask_ctr: the old pixel metrics (shape_metric) of the generated latent decoded by the
     random tiny VAE; they cannot move (the "targets via tiny VAE" row is their ceiling).
   Two conditionings are generated: the record's prompt with its [ref#k] placeholders (what
   Trainer.sample does; the first table) and the plain prompt with the references (the variant DreamO
   also trains on, plain_prompt_probability 0.5; the second table).

Reference rows: "base, plain prompt" (the pretrained base alone, no reference: what the text gives),
"trivial predictor" (diff of v = 0, route of a response map that is 0 everywhere, the dataset-mean
latent's scores, attn_in of attention spread evenly), the target images, and the targets through the
tiny VAE. Also printed: L_route of the best constant response map (no spatial information at all),
and attn_in of a response map equal to the mask (what L_route = 0 would give). --prompts colourless
drops the colour words from the prompts, so only the references carry the colour.

No pass/fail target; the figures are read. Run with ComfyUI's python:

    ~/ComfyUI/.venv/bin/python bench/dreamo_training_routing.py [--steps 300] [--workdir DIR]

Runtime with the defaults (one torch thread, --threads): 165 s of wall time from a fresh workdir, of
which 116 s pretrain the base and 8-9 s train each DreamO run; 57 s when the workdir holds the base
(about 30 s more to start Python and import). Measured with other jobs keeping the two cores busy (load
average 4.5); with one thread an idle machine should not be slower. --steps 1000: about +70 s.

Measured on 2 shared CPU cores (torch 2.14.1, CPU, fp32), defaults (24 records, all scored, 14 with two
shapes; 300 DreamO steps, rank 8, batch 4, lr 2e-3, seed 0). A rerun printed identical figures (only the
train seconds differ). Base: diff loss 2.351 -> 0.204 (trivial predictor 2.000).

Generated with the record's prompt, placeholders included (as Trainer.sample):
                        diff  route holder color_err mask_ctr  lat_in lat_out own>exch swap_delta swap_follows attn_in train s
untrained             0.9342 0.9163 0.1381    0.6106  -0.0014   2.850   1.565     0.46     -0.008         0.54   0.065       -
without L_route       0.4455 1.3887 0.0074    0.6168  -0.0098   2.000   0.873     0.61      0.017         0.39   0.067     8.4
with L_route          0.4798 0.0313 0.0117    0.6225  -0.0153   1.865   0.881     0.64     -0.017         0.36   0.064     9.1
base, plain prompt         -      -      -    0.6450  -0.0419   0.391   0.220     1.00          -            -       -       -
trivial predictor     2.0000 0.0288      -         -        -   1.832   0.538     0.50          -            -   0.062       -
target images              -      -      -    0.0000   0.8731   0.000   0.000     1.00          -            -       -       -
targets via tiny VAE       -      -      -    0.6685  -0.0697       -       -        -          -            -       -       -

Generated with the plain prompt (placeholders removed) and the references:
                       lat_in lat_out own>exch swap_delta swap_follows attn_in
untrained               0.511   0.264     0.96     -0.010         0.00   0.075
without L_route         0.620   0.311     0.96     -0.002         0.04   0.074
with L_route            0.501   0.284     0.96      0.001         0.04   0.069
base, plain prompt      0.391   0.220     1.00          -            -       -
trivial predictor       1.832   0.538     0.50          -            -   0.062

L_route of the best constant response map: 0.0244; attn_in of a response map equal to the mask: 0.093.

Other settings, same machine (figures without / with L_route):
- --steps 1000: route 1.484 / 0.021; placeholder prompt lat_in 1.828 / 1.819, own>exch 0.64 / 0.61,
  swap_delta +0.084 / -0.019, attn_in 0.067 / 0.065; plain prompt lat_in 0.620 / 0.628, own>exch
  0.96 / 0.96, swap_delta -0.003 / +0.001, swap_follows 0.04 / 0.04, attn_in 0.073 / 0.069.
- --prompts colourless --steps 3000 (base: diff 2.350 -> 0.262; alone it scores lat_in 1.405, own>exch
  0.79, the kinds still tell many records apart): route 1.167 / 0.016; placeholder prompt lat_in
  2.232 / 2.275 (untrained 2.820), own>exch 0.50 / 0.50, swap_delta +0.042 / +0.127, attn_in 0.065 /
  0.064; plain prompt lat_in 1.535 / 1.715, own>exch 0.75 / 0.75, swap_delta +0.001 / +0.034,
  swap_follows 0.25 / 0.29, attn_in 0.072 / 0.066. (With 1000 steps: plain lat_in 1.553 / 1.697.)

What that says:
- The base now denoises and generates: diff 0.20 against the trivial 2.00, and from its plain prompt
  it makes the record's target (lat_in 0.39 against 1.83 for the dataset-mean latent, own>exch 1.00),
  so the latent metrics can tell a right object at the right place from a wrong one.
- L_route does not help the functional metric at this scale; no run made the object follow its
  reference. Swapping the references leaves the generation where it was (plain prompt: swap_delta
  within +-0.04 of 0 and swap_follows 0.04-0.29 in every trained run, where a model that takes each
  reference's object to its reference's place would approach 1), with or without L_route, even with
  colour-free prompts where only the references carry the colour. The named prompts already say the
  colour and kind, so the references add nothing the text lacks; with colour-free prompts the LoRA
  still did not learn to read them in 3000 steps. The small differences between the two runs (plain
  lat_in -0.12 with L_route by default, +0.18 with colour-free prompts) change sign between settings
  (one seed each; the spread across seeds was not measured); 14 two-shape records make own>exch move
  in steps of 0.036.
- L_route's fall is almost all an offset: the untrained response map's L_route (0.92, 1.39 after
  training without it) is far above that of a map of zeros (0.029) or of the best constant (0.024),
  and training with it reaches 0.031, no better than either. Longer runs go a little below the constant
  (0.021 at 1000 steps, 0.016 at 3000 steps colour-free). attn_in stays near uniform (0.062): 0.063-0.078
  in every run; even a response map exactly equal to the mask would only give 0.093, since logits in
  [0, 1] barely sharpen a softmax over 16 tokens: L_route, as written (logits regressed onto the mask),
  asks for little concentration on a 4x4 token grid.
- Generating as Trainer.sample does (placeholders in the prompt) fails in every run: lat_in 1.8-2.3,
  at or above the dataset-mean latent (1.83). The placeholders change the random tiny T5's encoding of
  every token, so the base's prompt -> image memory is lost (untrained 2.85 against the base's 0.39),
  and 300-3000 LoRA steps do not bring it back; the plain prompt keeps it (0.50-0.63). We put this
  down to the random text encoder (not checked on a real T5).
- A functional answer needs references that carry what the text does not, over more records and steps
  than 2 cores allow here, and a response map with a larger token grid; the columns are in place for
  that run (real FLUX, or a larger pretrained tiny model with --prompts colourless).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from random_flux import import_package

PRETRAINED = "tiny-flux-pretrained"


def rewrite_prompts(folder: Path, mode: str) -> None:
    """--prompts colourless: drop the colour words from every prompt of the dataset just written (the kind
    words stay), so the colour at each place is only in the references."""
    if mode == "named":
        return
    from refcustom.train.synthetic import PALETTE

    meta = folder / "metadata.jsonl"
    lines = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
    for line in lines:
        words = [w for w in line["prompt"].split(" ") if w not in PALETTE]
        line["prompt"] = " ".join(words)
    meta.write_text("".join(json.dumps(line) + "\n" for line in lines))


# -- phase 1: a base FLUX that denoises the shapes ---------------------------------------------------


def pretrain_settings(args) -> dict:
    return {"count": args.count, "data_seed": args.data_seed, "resolution": args.resolution,
            "steps": args.pretrain_steps, "batch": args.pretrain_batch, "lr": args.pretrain_lr, "seed": args.seed,
            "calibrate_vae": not args.no_vae_calibration, "prompts": args.prompts, "version": 1}


def pretrain_base(args, workdir: Path) -> tuple[Path, dict]:
    """Full fine-tune of the tiny FLUX transformer with plain flow matching on the targets and their plain
    prompts (placeholders removed, no references); saved with the tiny folder's other parts (VAE shift and
    scale calibrated to the data unless --no-vae-calibration) as <workdir>/tiny-flux-pretrained. Reused
    when a previous run wrote it with the same settings. Returns (folder, its pretrain.json)."""
    import torch

    from refcustom.model.dreamo_conditioning import diagonal_position_ids
    from refcustom.model.placeholders import strip_placeholders
    from refcustom.train import losses
    from refcustom.train.components import PromptEncoder, encode_latents, load_flux, pack
    from refcustom.train.dataset import ReferenceDataset, read_metadata
    from refcustom.train.tiny_model import write_tiny_flux

    folder = workdir / PRETRAINED
    settings = pretrain_settings(args)
    marker = folder / "pretrain.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("settings") == settings:
            return folder, {**info, "cached": True}
    tiny = write_tiny_flux(workdir / "tiny-flux")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(tiny, tmp)
    records = read_metadata(workdir / "shapes")
    dataset = ReferenceDataset(records, args.resolution, args.reference_resolution)
    images = torch.stack([dataset[i]["image"] for i in range(len(records))])

    calibration = None
    if not args.no_vae_calibration:
        # FLUX's VAE shift and scale make its latents zero-mean, unit-variance; the tiny VAE is random and
        # carries FLUX's numbers, which leave these latents at variance ~0.017 (the target is ~2% of the
        # noise). Give the copy the shift and scale that normalise this data, as FLUX's were chosen.
        parts = load_flux(tmp, torch.float32, "cpu")
        with torch.no_grad():
            raw = parts.vae.encode(images).latent_dist.mode()
        calibration = {"shift_factor": float(raw.mean()), "scaling_factor": 1.0 / float(raw.std())}
        config_path = tmp / "vae" / "config.json"
        config = json.loads(config_path.read_text())
        config.update(calibration)
        config_path.write_text(json.dumps(config, indent=2))
        del parts

    parts = load_flux(tmp, torch.float32, "cpu")
    latents = encode_latents(parts.vae, images)  # [n, 16, h, w], with the copy's shift and scale
    prompts = PromptEncoder(parts, 32, [])
    plain = [strip_placeholders(r.prompt) for r in records]
    context = torch.cat([prompts.encode([p], None)[0] for p in plain]).detach()
    pooled = prompts.pooled(plain).detach()
    transformer = parts.transformer
    transformer.requires_grad_(True).train()
    height, width = latents.shape[2:]
    img_ids = diagonal_position_ids((height // 2, width // 2), [])
    txt_ids = torch.zeros(context.shape[1], 3)

    def velocity(noisy, rows, sigma):
        return transformer(hidden_states=pack(noisy), encoder_hidden_states=context[rows],
                           pooled_projections=pooled[rows], timestep=sigma, img_ids=img_ids, txt_ids=txt_ids,
                           guidance=torch.full((len(rows),), 3.5), return_dict=False)[0]

    def diff_loss(draws: int = 4) -> float:
        """Flow-matching loss on every record, `draws` fixed (sigma, noise) draws each."""
        generator = torch.Generator().manual_seed(args.eval_seed)
        rows = torch.arange(len(records))
        total = 0.0
        transformer.eval()
        with torch.no_grad():
            for _ in range(draws):
                sigma = losses.sample_sigmas(len(rows), generator, "logit_normal", 0.0, 1.0)
                noise = torch.randn(latents.shape, generator=generator)
                prediction = velocity(losses.noisy_latents(latents, noise, sigma), rows, sigma)
                total += float(losses.flow_matching_loss(prediction, pack(latents), pack(noise))) / draws
        transformer.train()
        return total

    before = diff_loss()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=args.pretrain_lr, weight_decay=0.0)
    steps, warmup = args.pretrain_steps, 50
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    for step in range(steps):
        rows = torch.randperm(len(records), generator=generator)[:args.pretrain_batch]
        sigma = losses.sample_sigmas(len(rows), generator, "logit_normal", 0.0, 1.0)
        noise = torch.randn((len(rows), *latents.shape[1:]), generator=generator)
        loss = losses.flow_matching_loss(velocity(losses.noisy_latents(latents[rows], noise, sigma), rows, sigma),
                                         pack(latents[rows]), pack(noise))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % max(1, steps // 6) == 0:
            print(f"  pretrain step {step + 1}/{steps}: batch loss {loss.item():.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    seconds = time.perf_counter() - started
    info = {"settings": settings, "diff_before": before, "diff_after": diff_loss(),
            "trivial_diff": 1.0 + float(latents.square().mean()), "seconds": seconds, "vae": calibration}
    transformer.requires_grad_(False).eval()
    shutil.rmtree(tmp / "transformer")
    transformer.save_pretrained(tmp / "transformer")
    (tmp / "pretrain.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder, {**info, "cached": False}


# -- phase 2: DreamO runs -----------------------------------------------------------------------------


def make_config(args, workdir: Path, name: str, lambda_route: float, pretrained: Path):
    from refcustom.train.config import config_from_dict

    return config_from_dict({
        "mode": "dreamo", "output_dir": str(workdir / name), "seed": args.seed,
        "model": {"pretrained": str(pretrained), "max_text_tokens": 32},
        "data": {"folder": str(workdir / "shapes"), "resolution": args.resolution,
                 "reference_resolution": args.reference_resolution, "batch_size": args.batch_size},
        "lora": {"rank": args.rank},
        "dreamo": {"routing_layers": [0, 1], "lambda_route": lambda_route, "lambda_holder": 0.1},
        "optim": {"learning_rate": args.lr},
        "stages": [{"name": "train", "steps": args.steps}],
        "run": {"log_every": 10, "checkpoint_every": args.steps, "keep_checkpoints": 1, "sample_count": 0,
                "export_dtype": "float32"},
    })


@contextlib.contextmanager
def route_measured(trainer):
    """L_route is skipped when its weight is 0; switch it on (weight 1) so it can be read."""
    cfg = trainer.config.dreamo
    saved = cfg.lambda_route
    cfg.lambda_route = saved or 1.0
    try:
        yield
    finally:
        cfg.lambda_route = saved


# -- phase 3: the functional metrics ------------------------------------------------------------------


def region_error(latent, target_latent, weights) -> list[float]:
    """Area-weighted MSE between two latents [C, h, w] over each of `weights` [n, h, w]."""
    squared = (latent - target_latent).square().mean(dim=0)  # [h, w]
    return [float((w * squared).sum() / w.sum()) for w in weights]


def latent_regions(masks, latent_side: int):
    """Pixel masks [n, H, W] -> (per-mask area fractions [n, h, w], outside-every-mask fractions [1, h, w])."""
    import torch.nn.functional as F

    factor = masks.shape[-1] // latent_side
    inside = F.avg_pool2d(masks[:, None].float(), kernel_size=factor)[:, 0]
    outside = F.avg_pool2d(1.0 - masks.amax(dim=0)[None, None].float(), kernel_size=factor)[0]
    return inside, outside


def exchanged_target(item: dict, shapes: list[dict], resolution: int):
    """The target with its two shapes exchanged between their places (shape j's kind and colour drawn in
    shape i's box, over the background): what a model that swaps the references would ideally make."""
    import torch

    from refcustom.train.synthetic import rasterize

    image = item["image"].clone()
    union = item["masks"].amax(dim=0) > 0
    background = image[:, ~union].median(dim=1).values
    image[:, union] = background[:, None]
    for k, shape in enumerate(shapes):
        other = shapes[1 - k]
        drawn = torch.from_numpy(rasterize(other["kind"], shape["box"], resolution))
        image[:, drawn] = (torch.tensor(other["rgb"], dtype=torch.float32) / 255 * 2 - 1)[:, None]
    return image


@contextlib.contextmanager
def evaluation_mode(model):
    model.eval()
    try:
        yield
    finally:
        model.train()


def generate(trainer, batch, seed: int, steps: int, references: bool = True, swap: bool = False,
             attention: bool = False):
    """Trainer.sample's Euler loop, returning the latent [C, h, w] instead of decoding it, and the
    reference->image attention mass inside each reference's mask (mean over routing layers and steps), or
    None. references=False: the plain prompt and no reference (the base model's own generation; the LoRA
    is zero at step 0). swap: the two references exchange their slots (the prompt is kept)."""
    import numpy as np
    import torch

    from refcustom.model.placeholders import strip_placeholders
    from refcustom.train.components import pack, unpack
    from refcustom.train.dreamo_model import split_captured
    from refcustom.train.losses import mask_to_tokens, routing_response

    device = trainer.accelerator.device
    model = trainer.accelerator.unwrap_model(trainer.model)
    height, width = batch["latents"].shape[2:]
    refs = [r.to(device) for r in batch["reference_latents"]] if references else []
    if swap:
        refs = refs[::-1]
    grids = [(height // 2, width // 2)] + [(r.shape[2] // 2, r.shape[3] // 2) for r in refs]
    if references:
        context, pooled = trainer.method.sampling_text(batch, device)
    else:
        plain = [strip_placeholders(p) for p in batch["prompt"]]
        context, _ = trainer.prompts.encode(plain, None)
        pooled = trainer.prompts.pooled(plain)
    x = pack(torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(seed))).to(device)
    scheduler = trainer.parts.scheduler
    kwargs = {}
    if scheduler.config.get("use_dynamic_shifting"):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift
        kwargs["mu"] = calculate_shift(x.shape[1])
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), device=device, **kwargs)
    mask_tokens = mask_to_tokens(batch["masks"]).to(device) if attention else None  # [B, n, N]
    counts = [g[0] * g[1] for g in grids[1:]]
    fractions = []
    guidance = torch.full((x.shape[0],), trainer.config.model.guidance, device=device)
    with torch.no_grad(), evaluation_mode(model):
        for t in scheduler.timesteps:
            sigma = (t / 1000).expand(x.shape[0]).to(device)
            # = trainer.method.predict(model, x, batch, grids, sigma, context, pooled), with capture
            velocity = model(x, [pack(r) for r in refs], list(range(1, len(refs) + 1)), grids, context, pooled,
                             sigma, guidance, capture=attention)
            if attention:
                for captured in model.captured:
                    queries, key = split_captured(captured, grids[0][0] * grids[0][1], counts)
                    for k, query in enumerate(queries):
                        mass = torch.softmax(routing_response(query, key), dim=-1)  # [B, N] over image tokens
                        fractions.append(float((mass * mask_tokens[:, k]).sum(dim=-1).mean()))
                model.captured = []
            x = scheduler.step(velocity, t, x).prev_sample
    latent = unpack(x, height, width)[0].float().cpu()
    return latent, (sum(fractions) / len(fractions) if fractions else None)


class Evaluation:
    """The evaluation records' target latents, regions and exchanged-shape latents (computed once)."""

    def __init__(self, trainer, args):
        from refcustom.train.components import encode_latents
        from refcustom.train.dataset import collate

        self.items = []
        for i in range(args.records):
            item = trainer.dataset[i]
            batch = trainer.latents_for(collate([item]))
            target = batch["latents"][0]
            inside, outside = latent_regions(item["masks"], target.shape[-1])
            shapes = trainer.records[i].extra["synthetic"]
            exchanged = None
            if len(shapes) == 2:
                exchanged = encode_latents(trainer.parts.vae, exchanged_target(item, shapes, args.resolution)[None])[0]
            self.items.append({"index": i, "target": target, "inside": inside, "outside": outside,
                               "exchanged": exchanged, "uniform": float(batch["masks"].mean(dim=(2, 3)).mean())})

    def scores(self, latent, item) -> dict:
        """lat_in (mean over the shapes), lat_out, own>exchanged (fraction of the shapes, two-shape records)."""
        errors = region_error(latent, item["target"], item["inside"])
        out = {"lat_in": sum(errors) / len(errors), "lat_out": region_error(latent, item["target"], item["outside"])[0]}
        if item["exchanged"] is not None:
            other = region_error(latent, item["exchanged"], item["inside"])
            out["own>exch"] = sum(e < o for e, o in zip(errors, other, strict=True)) / len(errors)
        return out


def mean_of(rows: list[dict]) -> dict:
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys}


def functional(trainer, evaluation: Evaluation, args, prompt: str = "placeholders") -> dict[str, float]:
    """Generate every evaluation record (fixed seed per record) and score it in latent space (and in pixels
    through the VAE: color_error, mask_contrast). prompt: "placeholders" (the record's prompt, as
    Trainer.sample), "plain" (its placeholders removed; the references are still there) or "base" (plain
    prompt, no reference). With references, also the generation with the two references exchanged
    (swap_delta, swap_follows) and the attention localisation (attn_in)."""
    from refcustom.model.placeholders import strip_placeholders
    from refcustom.train.components import decode_latents
    from refcustom.train.dataset import collate
    from refcustom.train.synthetic import shape_metric

    references = prompt != "base"
    rows = []
    for item in evaluation.items:
        i = item["index"]
        batch = trainer.latents_for(collate([trainer.dataset[i]]))
        if prompt == "plain":
            batch["prompt"] = [strip_placeholders(p) for p in batch["prompt"]]
        seed = args.sample_seed + i
        latent, attn = generate(trainer, batch, seed, args.sample_steps, references=references, attention=references)
        row = evaluation.scores(latent, item)
        image = decode_latents(trainer.parts.vae, latent[None])[0]
        row.update(shape_metric(image, trainer.records[i].extra, args.resolution))
        if attn is not None:
            row["attn_in"] = attn
        if references and item["exchanged"] is not None:
            swapped, _ = generate(trainer, batch, seed, args.sample_steps, swap=True)
            own = region_error(latent, item["target"], item["inside"])
            exchanged = region_error(swapped, item["target"], item["inside"])
            row["swap_delta"] = (sum(exchanged) - sum(own)) / len(own)
            follows = region_error(swapped, item["exchanged"], item["inside"])
            row["swap_follows"] = sum(f < e for f, e in zip(follows, exchanged, strict=True)) / len(own)
        rows.append(row)
    return mean_of(rows)


def targets(trainer, args) -> tuple[dict[str, float], dict[str, float]]:
    """shape_metric of the ground-truth targets, as they are and through the tiny VAE."""
    from refcustom.train.components import decode_latents, encode_latents
    from refcustom.train.synthetic import shape_metric

    raw = {"color_error": 0.0, "mask_contrast": 0.0}
    vae = dict(raw)
    for i in range(args.records):
        image = trainer.dataset[i]["image"]
        extra = trainer.records[i].extra
        round_trip = decode_latents(trainer.parts.vae, encode_latents(trainer.parts.vae, image[None]))[0]
        for sums, picture in ((raw, image), (vae, round_trip)):
            for name, value in shape_metric(picture, extra, args.resolution).items():
                sums[name] += value / args.records
    return raw, vae


def trivial(trainer, evaluation: Evaluation) -> dict[str, float]:
    """What knowing nothing but the data's statistics gives: diff loss of predicting v = 0 everywhere
    (E|noise - x0|^2 = 1 + E[x0^2], over all records), the dataset-mean latent's scores, and the mass
    inside the mask of attention spread evenly over the image tokens."""
    import torch

    from refcustom.train.dataset import collate
    from refcustom.train.losses import mask_to_tokens

    latents = torch.stack([trainer.latents_for(collate([trainer.dataset[i]]))["latents"][0]
                           for i in range(len(trainer.records))])
    mean = latents.mean(dim=0)
    row = mean_of([evaluation.scores(mean, item) for item in evaluation.items])
    row["diff"] = 1.0 + float(latents.square().mean())
    # L_route of a response map that is 0 everywhere (mean over the references of mean(mask^2) on the token grid)
    masks = [mask_to_tokens(trainer.dataset[i]["masks"][None])[0] for i in range(len(trainer.records))]
    per_reference = torch.cat([m.square().mean(dim=1) for m in masks])
    row["route"] = float(per_reference.mean())
    row["route_const"] = float(torch.cat([m.var(dim=1, unbiased=False) for m in masks]).mean())  # best constant map
    row["attn_in"] = sum(item["uniform"] for item in evaluation.items) / len(evaluation.items)
    # attn_in of a response map equal to its mask (L_route = 0): the most L_route itself asks for
    ideal = [(torch.softmax(m, dim=1) * m).sum(dim=1) for m in masks[:len(evaluation.items)]]
    row["attn_ideal"] = float(torch.cat(ideal).mean())
    return row


def measure(trainer, evaluation, args) -> dict[str, float]:
    with route_measured(trainer):
        terms = trainer.evaluate(batches=args.eval_batches, seed=args.eval_seed)
    plain = functional(trainer, evaluation, args, prompt="plain")
    return {**terms, **functional(trainer, evaluation, args), **{f"plain {k}": v for k, v in plain.items()}}


COLUMNS = [("diff", 7, 4), ("route", 7, 4), ("holder", 7, 4), ("color_err", 10, 4), ("mask_ctr", 9, 4),
           ("lat_in", 8, 3), ("lat_out", 8, 3), ("own>exch", 9, 2), ("swap_delta", 11, 3), ("swap_follows", 13, 2),
           ("attn_in", 8, 3), ("train s", 8, 1)]
ALIASES = {"color_err": "color_error", "mask_ctr": "mask_contrast"}
PLAIN_COLUMNS = [c for c in COLUMNS
                 if c[0] in ("lat_in", "lat_out", "own>exch", "swap_delta", "swap_follows", "attn_in")]


def print_table(title: str, columns, rows: dict, order: list[str], seconds: dict) -> None:
    print(f"\n{title}")
    header = f"{'':<21}" + "".join(f"{name:>{width}}" for name, width, _ in columns)
    print(header)
    print("-" * len(header))
    for label in order:
        row = {**rows[label], "train s": seconds.get(label)}
        cells = [f"{row[ALIASES.get(name, name)]:>{width}.{digits}f}" if row.get(ALIASES.get(name, name)) is not None
                 else f"{'-':>{width}}" for name, width, digits in columns]
        print(f"{label:<21}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="DreamO optimizer steps per run")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--count", type=int, default=24, help="dataset records")
    parser.add_argument("--prompts", choices=("named", "colourless"), default="named",
                        help="named: the prompts train/synthetic.py writes ('a red circle [ref#1] ...'); "
                             "colourless: the same without the colour words, so only the references carry it")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--reference-resolution", type=int, default=32)
    parser.add_argument("--records", type=int, default=24, help="records generated and scored (the first ones)")
    parser.add_argument("--sample-steps", type=int, default=12)
    parser.add_argument("--eval-batches", type=int, default=8, help="evaluate() batches (fixed noise)")
    parser.add_argument("--pretrain-steps", type=int, default=3000, help="base-model pretraining steps")
    parser.add_argument("--pretrain-batch", type=int, default=8)
    parser.add_argument("--pretrain-lr", type=float, default=2e-3)
    parser.add_argument("--no-vae-calibration", action="store_true",
                        help="keep the tiny VAE's FLUX shift and scale (latent variance ~0.017)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the tiny model's ops are too small to gain from more, "
                             "and a second thread loses badly when another job shares the cores); 0: torch's default")
    parser.add_argument("--progress", action="store_true", help="show the trainer's progress bars")
    parser.add_argument("--seed", type=int, default=0, help="training seed (pretraining and both runs)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=1234)
    parser.add_argument("--sample-seed", type=int, default=100)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the dataset, the pretrained base and the runs here; a rerun with the same "
                             "pretraining settings reuses the base (default: a temporary folder)")
    args = parser.parse_args()
    if args.records > args.count:
        parser.error("--records must not exceed --count")

    import_package()
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from refcustom.train.synthetic import write_shapes_dataset
    from refcustom.train.trainer import Trainer

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dreamo-routing-")))
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        write_shapes_dataset(workdir / "shapes", count=args.count, seed=args.data_seed, resolution=args.resolution,
                             reference_resolution=args.reference_resolution, max_references=2)
        rewrite_prompts(workdir / "shapes", args.prompts)
        print(f"pretraining the base ({args.pretrain_steps} steps, batch {args.pretrain_batch}, "
              f"lr {args.pretrain_lr}) ...", flush=True)
        pretrained, base = pretrain_base(args, workdir)
        cached = " (cached from an earlier run)" if base["cached"] else ""
        print(f"base: diff loss {base['diff_before']:.4f} -> {base['diff_after']:.4f} (trivial predictor "
              f"{base['trivial_diff']:.4f}), {base['seconds']:.0f} s{cached}; VAE shift/scale {base['vae']}",
              flush=True)
        variants = [("untrained", None), ("without L_route", 0.0), ("with L_route", 1.0)]
        rows, seconds = {}, {}
        evaluation = None
        for label, lambda_route in variants:
            name = label.replace(" ", "_").replace("L_", "")
            shutil.rmtree(workdir / name, ignore_errors=True)  # a fresh run, never a resumed one
            trainer = Trainer(make_config(args, workdir, name, lambda_route or 0.0, pretrained))
            if lambda_route is not None:
                start = time.perf_counter()
                with contextlib.redirect_stderr(sys.stderr if args.progress else io.StringIO()):
                    trainer.train()  # its tqdm bar writes to stderr
                seconds[label] = time.perf_counter() - start
            else:
                evaluation = Evaluation(trainer, args)
                rows["target images"], rows["targets via tiny VAE"] = targets(trainer, args)
                rows["target images"].update({"lat_in": 0.0, "lat_out": 0.0, "own>exch": 1.0})
                rows["trivial predictor"] = trivial(trainer, evaluation)
                rows["base, plain prompt"] = functional(trainer, evaluation, args, prompt="base")
            rows[label] = measure(trainer, evaluation, args)
            print(f"  {label}: done ({time.perf_counter() - started:.0f} s)", flush=True)
            del trainer

    two = sum(item["exchanged"] is not None for item in evaluation.items)
    print(f"\ntorch {torch.__version__} threads={torch.get_num_threads()} records={args.count} "
          f"res={args.resolution}/{args.reference_resolution} steps={args.steps} lr={args.lr} rank={args.rank} "
          f"batch={args.batch_size} lambda_holder=0.1 routing_layers=[0, 1]; losses on {args.eval_batches} "
          f"evaluate() batches; metrics on records 0..{args.records - 1} ({two} with two shapes), "
          f"{args.sample_steps} sample steps")
    base_rows = ["base, plain prompt", "trivial predictor"]
    print_table("Generated with the record's prompt, placeholders included (as Trainer.sample):", COLUMNS, rows,
                ["untrained", "without L_route", "with L_route", *base_rows, "target images", "targets via tiny VAE"],
                seconds)
    plain_rows = {label: {k.removeprefix("plain "): v for k, v in rows[label].items() if k.startswith("plain ")}
                  for label in ("untrained", "without L_route", "with L_route")}
    plain_rows.update({label: rows[label] for label in base_rows})
    print_table("Generated with the plain prompt (placeholders removed) and the references:", PLAIN_COLUMNS,
                plain_rows, ["untrained", "without L_route", "with L_route", *base_rows], {})
    print("base, plain prompt: the pretrained base alone, placeholders removed, no reference. trivial predictor: "
          "diff of v = 0,\nroute of logits 0 everywhere, latent scores of the dataset-mean latent, "
          "attn_in of attention spread evenly")
    best = rows["trivial predictor"]
    print(f"L_route of the best constant response map (no spatial information): {best['route_const']:.4f}; "
          f"attn_in of a response map equal to the mask (L_route = 0): {best['attn_ideal']:.3f}")
    with_, without = rows["with L_route"], rows["without L_route"]
    print("\nwith L_route minus without:")
    for key, better in (("route", "lower"), ("diff", "lower"), ("lat_in", "lower"), ("lat_out", "lower"),
                        ("own>exch", "higher"), ("swap_delta", "higher"), ("swap_follows", "higher"),
                        ("attn_in", "higher")):
        for prefix in ("", "plain ") if key not in ("route", "diff") else ("",):
            name = prefix + key
            print(f"  {name:<19} {with_[name]:+.4f} - {without[name]:+.4f} = {with_[name] - without[name]:+.4f}  "
                  f"({better} is better)")
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
