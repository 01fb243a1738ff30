"""Does DreamO training put the reference's object at the masked place, and what does L_route change?

A functional training benchmark on the synthetic shapes task (train/synthetic.py): every target
holds 1-2 flat palette-coloured shapes whose references, masks and exact colours are known. The
tiny random FLUX (train/tiny_model.py) is trained with the real trainer twice from the same seed
and the same LoRA init, once without the routing loss (lambda_route = 0) and once with it
(lambda_route = 1); lambda_holder = 0.1 in both. Measured side by side in one run, before training
(a Trainer built, step 0) and after each run:

- evaluate(): the mean loss terms (diff, route, holder) on the first --eval-batches batches of the
  epoch-0 plan with fixed noise. L_route is computed for the run trained without it too (it is only
  measured there, never a training signal);
- shape_metric on generated images: the first --records dataset records are generated with
  Trainer.sample (--sample-steps Euler steps, seed fixed per record) and scored: color_error (mean
  RGB distance to the reference colour over the shape's mask, lower is better) and mask_contrast
  (distance outside minus inside, higher is better). These are training records: the placement is
  not in the prompt, so only a trained model can know it;
- latent_err: the same question asked in the space the transformer generates in. Mean squared
  error between the generated latent and the target's VAE latent over each shape's mask (mask
  pooled to the latent grid as area weights), averaged over shapes. 0 is the target itself.

Reference rows: the ground-truth target images (the metric's own upper bound), and the targets
passed through the tiny VAE (encode, decode): the best any transformer could reach in pixels here.

No pass/fail target; the figures are read. Run with ComfyUI's python:

    ~/ComfyUI/.venv/bin/python bench/dreamo_training_routing.py [--steps 300] [--workdir DIR]

Runtime with the defaults on 2 CPU cores: 46 s of wall time with the machine to itself (11.5 s of
training per run); 6 to 10 minutes when other jobs share the two cores (measured 368 s and 614 s).

Measured on 2 CPU cores (torch 2.14.1, CPU, fp32), defaults (48 records, 300 steps, rank 8, batch 4,
lr 2e-3, seed 0). Every loss and metric figure came out identical in all three default runs that printed it
(the run is deterministic); the train seconds are from the run that had the machine to itself:

                          diff   route  holder  color_error  mask_contrast  latent_err  train s
    untrained           1.3738  0.5284  0.2037       0.6431        -0.0250      1.4088        -
    without L_route     0.9996  0.5713  0.0006       0.6406        -0.0232      1.0024     11.5
    with L_route        1.0342  0.0338  0.0086       0.6446        -0.0278      1.0441     11.4
    trivial predictor   1.0174       -       -            -              -      0.0305        -
    target images            -       -       -       0.0000         0.8646      0.0000        -
    targets via tiny VAE     -       -       -       0.6956        -0.0945           -        -

    with / without L_route: route 0.059 (0.0338 vs 0.5713), color_error 1.006 (+0.0040),
    mask_contrast -0.0278 vs -0.0232 (-0.0046), latent_err 1.042, diff 1.035

What that says:
- L_route trains what it measures: 17x lower with it (0.571 -> 0.034), while the run without it
  drifts slightly up from the untrained 0.528; the price is +3.5% diff loss. L_holder falls in
  both runs (0.204 -> 0.0006 / 0.0086).
- The functional question is NOT answered on the tiny model; nothing functional moved. The tiny
  VAE has random weights: its encode/decode round trip of the ground-truth targets already scores
  color_error 0.70 and mask_contrast -0.09, so no pixel metric of a generated image can approach
  the targets' 0.00 / 0.86. The generated images stay at about 0.64 / -0.02 before training and
  after it, with or without L_route (they differ in the third decimal).
- In latent space the transformer has not learnt to denoise in 300 steps: its diff loss (1.00) is
  at the level of predicting v = 0 (1.017), and its sampled latents are as far from the targets
  (latent_err 1.0, about the unit variance of the starting noise) as before training, while the
  dataset-mean latent scores 0.03. Only the LoRA and embeddings train (the model's input
  x_embedder and its output norm_out / proj_out stay random and frozen).
- A functional answer needs a colour-preserving VAE and a base transformer that already denoises
  (real FLUX.1-dev, or a tiny model pretrained on the shapes first). The table's reference rows
  show when that is the case: "targets via tiny VAE" should then come near "target images".
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "refcustom"


def import_package():
    """`import refcustom` from this checkout (the repo root is the package, whatever the folder's name)."""
    module = sys.modules.get(PACKAGE)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def make_config(args, workdir: Path, name: str, lambda_route: float):
    from refcustom.train.config import config_from_dict

    return config_from_dict({
        "mode": "dreamo", "output_dir": str(workdir / name), "seed": args.seed,
        "model": {"pretrained": "tiny", "tiny_dir": str(workdir / "tiny-flux"), "max_text_tokens": 32},
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


@contextlib.contextmanager
def latents_kept(kept: list):
    """Keep the latent Trainer.sample decodes (it returns only the image)."""
    import refcustom.train.trainer as trainer_module

    decode = trainer_module.decode_latents

    def keeping(vae, latents):
        kept.append(latents.detach().float().cpu())
        return decode(vae, latents)

    trainer_module.decode_latents = keeping
    try:
        yield
    finally:
        trainer_module.decode_latents = decode


def latent_error(latent, target_latent, masks) -> float:
    """Mean over shapes of the mask-area-weighted MSE between two latents [C, h, w]; masks [n, H, W]."""
    import torch.nn.functional as F

    factor = masks.shape[-1] // latent.shape[-1]
    weights = F.avg_pool2d(masks[:, None].float(), kernel_size=factor)[:, 0]  # [n, h, w] area fractions
    squared = (latent - target_latent).square().mean(dim=0)  # [h, w]
    errors = [(w * squared).sum() / w.sum() for w in weights if w.sum() > 0]
    return float(sum(errors) / len(errors))


def functional(trainer, args) -> dict[str, float]:
    """shape_metric and latent_err of generated images on the first --records records (fixed seeds)."""
    from refcustom.train.dataset import collate
    from refcustom.train.synthetic import shape_metric

    sums = {"color_error": 0.0, "mask_contrast": 0.0, "latent_err": 0.0}
    for i in range(args.records):
        kept: list = []
        with latents_kept(kept):
            image = trainer.sample(i, steps=args.sample_steps, seed=args.sample_seed + i)
        scores = shape_metric(image, trainer.records[i].extra, args.resolution)
        item = trainer.dataset[i]
        target = trainer.latents_for(collate([item]))["latents"][0]
        scores["latent_err"] = latent_error(kept[-1][0], target, item["masks"])
        for name in sums:
            sums[name] += scores[name] / args.records
    return sums


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


def trivial(trainer, args) -> dict[str, float]:
    """What knowing nothing but the data's statistics gives: diff loss of predicting v = 0 everywhere
    (E|noise - x0|^2 = 1 + E[x0^2], over all records) and latent_err of the dataset-mean latent."""
    import torch

    from refcustom.train.dataset import collate

    latents = [trainer.latents_for(collate([trainer.dataset[i]]))["latents"][0] for i in range(len(trainer.records))]
    stacked = torch.stack(latents)
    mean = stacked.mean(dim=0)
    errors = [latent_error(mean, latents[i], trainer.dataset[i]["masks"]) for i in range(args.records)]
    return {"diff": 1.0 + float(stacked.square().mean()), "latent_err": sum(errors) / len(errors)}


def measure(trainer, args) -> dict[str, float]:
    with route_measured(trainer):
        terms = trainer.evaluate(batches=args.eval_batches, seed=args.eval_seed)
    return {**terms, **functional(trainer, args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--count", type=int, default=48, help="dataset records")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--reference-resolution", type=int, default=32)
    parser.add_argument("--records", type=int, default=8, help="records generated and scored (the first ones)")
    parser.add_argument("--sample-steps", type=int, default=12)
    parser.add_argument("--eval-batches", type=int, default=8, help="evaluate() batches (fixed noise)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (both runs)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=1234)
    parser.add_argument("--sample-seed", type=int, default=100)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the dataset, tiny model and runs here (default: a temporary folder)")
    args = parser.parse_args()
    if args.records > args.count:
        parser.error("--records must not exceed --count")

    import_package()
    import torch

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
        variants = [("untrained", None), ("without L_route", 0.0), ("with L_route", 1.0)]
        rows, seconds = {}, {}
        for label, lambda_route in variants:
            name = label.replace(" ", "_").replace("L_", "")
            shutil.rmtree(workdir / name, ignore_errors=True)  # a fresh run, never a resumed one
            trainer = Trainer(make_config(args, workdir, name, lambda_route or 0.0))
            if lambda_route is not None:
                start = time.perf_counter()
                trainer.train()
                seconds[label] = time.perf_counter() - start
            else:
                rows["target images"], rows["targets via tiny VAE"] = targets(trainer, args)
                rows["target images"]["latent_err"] = 0.0
                rows["trivial predictor"] = trivial(trainer, args)
            rows[label] = measure(trainer, args)
            del trainer

    print(f"\ntorch {torch.__version__} threads={torch.get_num_threads()} records={args.count} "
          f"res={args.resolution}/{args.reference_resolution} steps={args.steps} lr={args.lr} rank={args.rank} "
          f"batch={args.batch_size} lambda_holder=0.1 routing_layers=[0, 1]; losses on {args.eval_batches} "
          f"evaluate() batches, metrics on records 0..{args.records - 1} ({args.sample_steps} sample steps)")
    columns = [("diff", 8), ("route", 8), ("holder", 8), ("color_error", 13), ("mask_contrast", 15),
               ("latent_err", 12), ("train s", 9)]
    header = f"{'':<22}" + "".join(f"{name:>{width}}" for name, width in columns)
    print(header)
    print("-" * len(header))
    order = ["untrained", "without L_route", "with L_route", "trivial predictor", "target images",
             "targets via tiny VAE"]
    for label in order:
        row = {**rows[label], "train s": seconds.get(label)}
        cells = [f"{row[name]:>{width}.{1 if name == 'train s' else 4}f}" if row.get(name) is not None
                 else f"{'-':>{width}}" for name, width in columns]
        print(f"{label:<22}" + "".join(cells))
    print("trivial predictor: diff of predicting v = 0, latent_err of the dataset-mean latent")
    with_, without = rows["with L_route"], rows["without L_route"]
    print("\nwith / without L_route:")
    for key, better in (("route", "lower"), ("color_error", "lower"), ("mask_contrast", "higher"),
                        ("latent_err", "lower"), ("diff", "lower")):
        ratio = with_[key] / without[key] if without[key] else float("nan")
        print(f"  {key:<14} {with_[key]:.4f} / {without[key]:.4f} = {ratio:.3f}   difference {with_[key] - without[key]:+.4f}"
              f"  ({better} is better{'; both negative, read the difference' if with_[key] < 0 and without[key] < 0 else ''})")
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
