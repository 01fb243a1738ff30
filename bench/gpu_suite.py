"""One command for the FLUX-size figures of issue 18: each patch's cost per step next to plain FLUX.

Random FLUX.1-dev-size weights (random_flux.PRESETS["flux-1024"]: ComfyUI's own FLUX class, no download),
1024x1024, bf16 on CUDA; one process, one warm-up call per row, then --repeats interleaved rounds (default 5,
the order reversed every other round). Rows, each reusing its own benchmark's builders:

- plain FLUX: one model forward at batch 1 (the baseline) and at batch 4 (Masked Shared Attention's);
- DreamO with 1 and with 3 references of the preset's reference size (dreamo_reference_cost.py);
- core's DualCFGGuider and the normalized guider (SynCD's three branches), per sampling step
  (normalized_guidance_cost.py);
- FLUX + one core reference, and AlignGen on it (aligngen_cost.py's (b) and (c));
- Masked Shared Attention at batch 4 with 30% foreground: the gathered kernel (the patch's default) and the
  dense definition (model.shared_attention.dense_shared_attention), as full FLUX steps.

For each row: the median seconds per step, the ratio to its baseline, the ratio the token-count model
predicts, and the row's peak CUDA memory (torch.cuda.max_memory_allocated, reset before every call;
weights included). The model is t(S) = a S + b S^2, S the tokens of one image (text + noise + references),
fitted to plain FLUX at three other image sizes in the same run as dreamo_reference_cost.py fits it. A
guider's prediction sums t over its three model rows (two carry the reference); Masked Shared Attention's
scales the attention term by the query-key-pair ratio (gathered: own tokens plus the other images'
foreground; dense: all B L keys of the batch, i.e. B).

The dense bias is [B L, B L] per block ([4 * 4608]^2 at 1024 px). Before timing, one dense attention
layer is timed at the preset's size; if the dense row at that size would take longer than --dense-budget
seconds in all, the next smaller size (3/4, 1/2, 1/4) is tried, and the dense row, with a gathered and a
plain batch-4 row at the same size, runs there; the table says so.

    ~/ComfyUI/.venv/bin/python bench/gpu_suite.py                  # flux-1024 on CUDA, cpu-tiny without it
    ~/ComfyUI/.venv/bin/python bench/gpu_suite.py --preset cpu-tiny --repeats 1 --json out.json   # smoke run
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aligngen_cost import CONCEPT_END, CONCEPT_START, random_aligngen
from random_flux import build_random_flux, dreamo_options, fit_token_cost, import_host, preset_arguments, syncd_guiders

MSA_BATCH = 4
FOREGROUND = 0.3  # the share of its image tokens each image lends (random tokens, as shared_attention_cost.py)
DEM_HEADS = 8
SUITE_REPEATS = 5  # rounds without --repeats (at most the preset's): flux-1024 then fits 5 minutes on one GPU


@dataclass
class Row:
    """One line of the table. `run` does one timed call and returns seconds per step; `predict(a, b)` is the
    token-count model's ratio to the baseline row for t(S) = a S + b S^2."""

    key: str
    label: str
    run: Callable[[], float]
    baseline: str | None
    predict: Callable[[float, float], float]
    basis: str
    batch: int
    image: int
    tokens: int  # S of one image
    prepare: Callable[[], None] | None = None  # untimed, before every call: load the row's ModelPatcher
    times: list[float] = field(default_factory=list)
    peak_mib: float | None = None


def cost(a: float, b: float, tokens: int, attention: float = 1.0) -> float:
    """t(S) with the attention term scaled by `attention` (a query-key-pair ratio)."""
    return a * tokens + b * tokens * tokens * attention


class Bench:
    """The random FLUX and what every row shares: inputs per (batch, size), timing, peak memory."""

    def __init__(self, torch, cfg: dict):
        import comfy.model_management

        self.torch = torch
        self.cfg = cfg
        self.patcher, self.device, self.dtype = build_random_flux(cfg)
        self.flux = self.patcher.model.diffusion_model
        self.cuda = self.device.type == "cuda"
        self.load_models_gpu = comfy.model_management.load_models_gpu
        self.generator = torch.Generator().manual_seed(0)
        self._inputs = {}

    def randn(self, *shape):
        return self.torch.randn(*shape, generator=self.generator).to(self.device, self.dtype)

    def tokens(self, height: int, width: int | None = None, refs: int = 0) -> int:
        """S of one image: text + noise tokens (16 px each) + `refs` references of the preset's size."""
        width = width or height
        return self.cfg["text"] + (height // 16) * (width // 16) + refs * (self.cfg["ref"] // 16) ** 2

    def forward(self, batch: int, height: int, width: int | None = None, options: dict | None = None, **kwargs):
        """One FLUX forward on random inputs of that batch and size (the same inputs every call)."""
        width = width or height
        key = (batch, height, width)
        if key not in self._inputs:
            self._inputs[key] = (self.randn(batch, 16, height // 8, width // 8), self.randn(batch, self.cfg["text"], 4096),
                                 self.randn(batch, 768), self.torch.full((batch,), 0.5, device=self.device),
                                 self.torch.full((batch,), 3.5, device=self.device))
        x, context, y, t, guidance = self._inputs[key]
        with self.torch.no_grad():
            self.flux(x, t, context, y=y, guidance=guidance, transformer_options=options or {}, **kwargs)

    def timed(self, fn: Callable[[], object], per: int = 1) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            fn()
            if self.cuda:
                self.torch.cuda.synchronize()
            return (time.perf_counter() - start) / per
        return run

    def loader(self, patcher=None) -> Callable[[], None]:
        patcher = patcher or self.patcher
        return lambda: self.load_models_gpu([patcher], force_full_load=True)

    def call(self, row: Row, record: bool = True) -> float:
        (row.prepare or self.loader())()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        seconds = row.run()
        if self.cuda:
            row.peak_mib = max(row.peak_mib or 0.0, self.torch.cuda.max_memory_allocated() / 2**20)
        if record:
            row.times.append(seconds)
        return seconds


def plain_rows(bench: Bench) -> tuple[list[Row], list[Row]]:
    """([plain FLUX at batch 1, the baseline], calibration rows: plain FLUX at three other widths)."""
    image = bench.cfg["image"]
    s = bench.tokens(image)
    rows = [Row("plain", "plain FLUX step", bench.timed(lambda: bench.forward(1, image)), None,
                lambda a, b: 1.0, f"S = {s} tokens", 1, image, s)]
    calibration = []
    for width in (image // 2, image * 3 // 2, image * 2):
        s_width = bench.tokens(image, width)
        calibration.append(Row(f"calibrate_w{width}", f"plain FLUX {image}x{width}",
                               bench.timed(lambda width=width: bench.forward(1, image, width)), "plain",
                               lambda a, b, s_width=s_width: cost(a, b, s_width) / cost(a, b, s),
                               f"S = {s_width} tokens", 1, image, s_width))
    return rows, calibration


def dreamo_rows(bench: Bench, package) -> list[Row]:
    cfg = bench.cfg
    options, conditioning, patch = dreamo_options(package, cfg["hidden"], bench.device)
    references = [bench.randn(1, 16, cfg["ref"] // 8, cfg["ref"] // 8) for _ in range(3)]
    image, s = cfg["image"], bench.tokens(cfg["image"])

    def run(k: int):
        named = conditioning.DreamOReferenceSet(tuple(conditioning.DreamOReference(index=i + 1, slot=i) for i in range(k)))
        bench.forward(1, image, options=options, ref_latents=references[:k], ref_latents_method="uxo",
                      **{patch.DREAMO_COND_KEY: named})

    return [Row(f"dreamo_{k}ref", f"DreamO, {k} reference{'s' if k > 1 else ''} ({cfg['ref']} px)",
                bench.timed(lambda k=k: run(k)), "plain",
                lambda a, b, k=k: cost(a, b, bench.tokens(image, refs=k)) / cost(a, b, s),
                f"S = {bench.tokens(image, refs=k)} tokens", 1, image, bench.tokens(image, refs=k)) for k in (1, 3)]


def guider_rows(bench: Bench, package, steps: int) -> list[Row]:
    import comfy.samplers

    torch, cfg = bench.torch, bench.cfg
    guiders = syncd_guiders(package, bench.patcher, cfg)
    latent = cfg["image"] // 8
    noise = torch.randn(1, 16, latent, latent, generator=torch.Generator().manual_seed(1))
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    sampler = comfy.samplers.sampler_object("euler")
    s, s_ref = bench.tokens(cfg["image"]), bench.tokens(cfg["image"], refs=1)
    names = {"DualCFGGuider": ("dualcfg_guider", "core DualCFGGuider, per sampling step"),
             "NormalizedGuidanceGuider": ("normalized_guider", "normalized guider (SynCD), per sampling step")}
    return [Row(names[name][0], names[name][1],
                bench.timed(lambda guider=guider: guider.sample(noise, torch.zeros_like(noise), sampler, sigmas, seed=0,
                                                                disable_pbar=True), per=steps),
                "plain", lambda a, b: (2 * cost(a, b, s_ref) + cost(a, b, s)) / cost(a, b, s),
                f"3 model rows (2 of S = {s_ref}), {steps}-step sample / {steps}", 1, cfg["image"], s)
            for name, guider in guiders.items()]


def aligngen_rows(bench: Bench, package) -> list[Row]:
    """aligngen_cost.py's (b) FLUX + a core reference and (c) AlignGen (reference LoRA + selective mask) on it."""
    cfg = bench.cfg
    modules = {name: importlib.import_module(f"{package.__name__}.{name}")
               for name in ("model.aligngen", "model.aligngen_weights", "nodes.aligngen_patch", "nodes.aligngen_loader")}
    aligngen_patch = modules["nodes.aligngen_patch"]
    weights = random_aligngen(cfg, DEM_HEADS, modules["model.aligngen"], modules["model.aligngen_weights"])
    patched = modules["nodes.aligngen_loader"].apply_aligngen(bench.patcher, weights, 1.0)
    payload = {aligngen_patch.ALIGNGEN_COND_KEY: aligngen_patch.AlignGenConditioning(
        concept_start=CONCEPT_START, concept_end=CONCEPT_END, reference_slot=0)}
    reference = bench.randn(1, 16, cfg["ref"] // 8, cfg["ref"] // 8)
    image, s, s_ref = cfg["image"], bench.tokens(cfg["image"]), bench.tokens(cfg["image"], refs=1)

    def run(patcher, kwargs: dict):
        bench.forward(1, image, options={"wrappers": patcher.wrappers}, ref_latents=[reference],
                      ref_latents_method="uxo", **kwargs)

    def predict(a, b):
        return cost(a, b, s_ref) / cost(a, b, s)

    return [Row("core_reference", f"FLUX + 1 core reference ({cfg['ref']} px)",
                bench.timed(lambda: run(bench.patcher, {})), "plain", predict, f"S = {s_ref} tokens", 1, image, s_ref),
            Row("aligngen", f"AlignGen, 1 reference ({cfg['ref']} px)", bench.timed(lambda: run(patched, payload)),
                "plain", predict, f"S = {s_ref} tokens", 1, image, s_ref, prepare=bench.loader(patched))]


class SharedAttentionRows:
    """Masked Shared Attention at batch 4 through the patch (SharedAttentionWrapper), per image size."""

    def __init__(self, bench: Bench, package):
        import comfy.patcher_extension

        self.bench = bench
        self.patch = importlib.import_module(f"{package.__name__}.nodes.shared_attention_patch")
        self.msa = importlib.import_module(f"{package.__name__}.model.shared_attention")
        self.wrappers_key = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL

    def masks(self, image: int):
        """Pixel masks at token resolution (so dilation 1 keeps them as they are) and the foreground tokens."""
        torch, grid = self.bench.torch, image // 16
        masks = (torch.rand(MSA_BATCH, grid, grid, generator=torch.Generator().manual_seed(image)) < FOREGROUND).float()
        return masks, masks.flatten(1) > 0

    def pair_ratio(self, image: int) -> float:
        """Query-key pairs of the gathered kernel over unpatched attention's B L^2."""
        _, foreground = self.masks(image)
        text, noise = self.bench.cfg["text"], (image // 16) ** 2
        length, lent = text + noise, int(foreground.sum())
        pairs = sum(noise * (length + lent - int(own.sum())) + text * length for own in foreground)
        return pairs / (MSA_BATCH * length * length)

    def options(self, image: int, kernel=None) -> dict:
        settings = {"masks": self.masks(image)[0], "dilation": 1, "full_shared_steps": 0}
        if kernel is not None:
            settings["kernel"] = kernel
        wrapper = self.patch.SharedAttentionWrapper(self.patch.SharedAttentionSettings(**settings))
        return {"wrappers": {self.wrappers_key: {"msa": [wrapper]}}, "cond_or_uncond": [0]}

    def row(self, kind: str, image: int, suffix: str = "") -> Row:
        bench, b4 = self.bench, MSA_BATCH
        s, s_plain = bench.tokens(image), bench.tokens(bench.cfg["image"])
        at = f" ({image} px)" if suffix else ""
        if kind == "plain":
            return Row(f"plain_b4{suffix}", f"plain FLUX step, batch 4{at}",
                       bench.timed(lambda: bench.forward(b4, image, options={"cond_or_uncond": [0]})), "plain",
                       lambda a, b: b4 * cost(a, b, s) / cost(a, b, s_plain), f"{b4} rows of S = {s}", b4, image, s)
        dense = kind == "dense"
        ratio = float(b4) if dense else self.pair_ratio(image)
        options = self.options(image, self.msa.dense_shared_attention if dense else None)
        return Row(f"msa_{kind}{suffix}", f"MSA {kind}, batch 4, {FOREGROUND:.0%} fg{at}",
                   bench.timed(lambda: bench.forward(b4, image, options=options)), f"plain_b4{suffix}",
                   lambda a, b: cost(a, b, s, ratio) / cost(a, b, s), f"query-key pairs x{ratio:.3f}", b4, image, s)

    def dense_layer_seconds(self, image: int) -> float:
        """One dense attention layer at this size (FLUX's heads), timed once: a floor for one block's share of
        the dense step. Its q, k, v are freed (and the CUDA cache emptied) before it returns."""
        bench, cfg = self.bench, self.bench.cfg
        length = cfg["text"] + (image // 16) ** 2
        qkv = [bench.randn(MSA_BATCH, cfg["heads"], length, cfg["hidden"] // cfg["heads"]) for _ in range(3)]
        foreground = self.masks(image)[1].to(bench.device)
        try:
            return bench.timed(lambda: self.msa.dense_shared_attention(*qkv, cfg["text"], foreground))()
        finally:
            qkv.clear()
            if bench.cuda:
                bench.torch.cuda.empty_cache()

    def dense_size(self, budget: float, calls: int, plain_b4_seconds: float) -> tuple[int, list[str]]:
        """The largest size (the preset's, then 3/4, 1/2, 1/4 of it) whose dense row should fit `budget` seconds
        over `calls` calls, estimated as blocks x one dense layer + the plain batch-4 step (the smallest size
        that does not run out of memory if none does); and notes on the sizes passed over."""
        bench, cfg = self.bench, self.bench.cfg
        blocks, image = cfg["depth"] + cfg["single"], cfg["image"]
        sizes = list(dict.fromkeys(max(16, image * n // 4 // 16 * 16) for n in (4, 3, 2, 1)))
        notes = []
        for size in sizes:
            bias = f"[{MSA_BATCH * (cfg['text'] + (size // 16) ** 2)}]^2 bias"
            try:
                estimate = blocks * self.dense_layer_seconds(size) + plain_b4_seconds
            except bench.torch.cuda.OutOfMemoryError:
                bench.torch.cuda.empty_cache()
                notes.append(f"dense MSA at {size} px ({bias}) ran out of memory")
                continue
            if estimate * calls <= budget or size == sizes[-1]:
                if size == image:
                    notes.append(f"dense MSA at the preset's {size} px ({bias} per block)")
                else:
                    fits = estimate * calls <= budget
                    notes.append(f"dense MSA measured at {size} px ({bias}): " + (
                        f"the largest size within --dense-budget {budget:.0f} s" if fits else
                        f"the smallest size tried, still over --dense-budget {budget:.0f} s"))
                return size, notes
            notes.append(f"dense MSA at {size} px ({bias}): ~{estimate:.1f} s/step estimated, {calls} calls over "
                         f"--dense-budget {budget:.0f} s")
        raise RuntimeError("the dense shared attention ran out of memory at every size: " + "; ".join(notes))


def interleave(bench: Bench, rows: list[Row], repeats: int) -> None:
    for round_ in range(repeats):  # interleaved, so drift hits every row alike; the order reversed every other round
        for row in rows[::-1] if round_ % 2 else rows:
            bench.call(row)


def report(rows: list[Row], calibration: list[Row], fit: tuple[float, float], notes: list[str], header: dict) -> dict:
    """Print the table; return it (with the fit and the calibration points) for --json."""
    median = {row.key: statistics.median(row.times) for row in rows + calibration}
    labels = {row.key: row.label for row in rows}
    table = [{"key": row.key, "label": row.label, "batch": row.batch, "image_px": row.image, "tokens": row.tokens,
              "seconds": median[row.key], "times": row.times, "baseline": row.baseline,
              "ratio": median[row.key] / median[row.baseline] if row.baseline else 1.0,
              "predicted": row.predict(*fit), "basis": row.basis, "peak_mib": row.peak_mib} for row in rows]
    points = [{"tokens": row.tokens, "seconds": median[row.key]} for row in [rows[0], *calibration]]
    print(" ".join(f"{key}={value}" for key, value in header.items()))
    print(f"token-count model t(S) = {fit[0]:.3e} S + {fit[1]:.3e} S^2, fitted to plain FLUX (batch 1) at "
          + ", ".join(f"S = {p['tokens']} ({p['seconds']:.4f} s)" for p in points))
    print(f"{'row':<46}{'median s/step':>14}{'ratio':>8}  {'to':<35}{'predicted':>10}{'peak MiB':>11}  basis")
    for line in table:
        peak = "n/a (CPU)" if line["peak_mib"] is None else f"{line['peak_mib']:.0f}"
        print(f"{line['label']:<46}{line['seconds']:>14.4f}{line['ratio']:>8.3f}  {labels.get(line['baseline'], '-'):<35}"
              f"{line['predicted']:>10.3f}{peak:>11}  {line['basis']}")
    for note in notes:
        print("note:", note)
    return {**header, "fit": {"a": fit[0], "b": fit[1]}, "calibration": points, "rows": table, "notes": notes}


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the table (and the fit) as JSON to this path")
    parser.add_argument("--steps", type=int, default=3, help="sampling steps per guider call (its time / steps)")
    parser.add_argument("--dense-budget", type=float, default=60.0,
                        help="seconds the dense MSA row may take in all; above it, it runs at a smaller size")
    import torch

    args, cfg, _ = preset_arguments(__doc__, parser, "flux-1024" if torch.cuda.is_available() else "cpu-tiny")
    repeats = args.repeats or min(cfg["repeats"], SUITE_REPEATS)
    package = import_host()
    bench = Bench(torch, cfg)
    rows, calibration = plain_rows(bench)
    rows += dreamo_rows(bench, package) + guider_rows(bench, package, args.steps) + aligngen_rows(bench, package)
    shared = SharedAttentionRows(bench, package)
    rows += [shared.row("plain", cfg["image"]), shared.row("gathered", cfg["image"])]
    for row in rows + calibration:  # warm-up
        bench.call(row, record=False)

    plain_b4 = bench.call(next(row for row in rows if row.key == "plain_b4"), record=False)
    dense_image, notes = shared.dense_size(args.dense_budget, repeats + 1, plain_b4)
    suffix = "" if dense_image == cfg["image"] else "_at_dense_size"
    extra = [shared.row("plain", dense_image, suffix), shared.row("gathered", dense_image, suffix)] if suffix else []
    extra.append(shared.row("dense", dense_image, suffix))
    for row in extra:
        bench.call(row, record=False)
    rows += extra

    interleave(bench, rows + calibration, repeats)
    fit = fit_token_cost([(row.tokens, statistics.median(row.times)) for row in [rows[0], *calibration]])
    header = {"device": str(bench.device), "dtype": str(bench.dtype).removeprefix("torch."), "preset": args.preset,
              "hidden": cfg["hidden"], "blocks": f"{cfg['depth']}+{cfg['single']}", "image_px": cfg["image"],
              "ref_px": cfg["ref"], "text": cfg["text"], "repeats": repeats, "guider_steps": args.steps,
              "threads": torch.get_num_threads()}
    result = report(rows, calibration, fit, notes, header)
    result["wall_seconds"] = time.perf_counter() - started
    print(f"wall time {result['wall_seconds']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
