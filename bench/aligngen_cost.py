"""Per-step cost of AlignGen on ComfyUI's FLUX, and proof that its DEM runs once per prompt, not per step.

Runs, side by side in one process and interleaved, the FLUX forward of a random-weight model
(ComfyUI's own classes, bench/random_flux.py) with random in-memory AlignGen weights (S*, a
DEM at T5 width 4096 built as Load AlignGen builds it, a rank-16 reference-only LoRA on every block's
img_attn.qkv/img_attn.proj or linear1/linear2), each variant after
comfy.model_management.load_models_gpu(force_full_load=True):

  (a) plain FLUX, no reference (the baseline);
  (b) FLUX + the same reference latent through core ComfyUI ("uxo"), no AlignGen: the reference
      tokens' own cost;
  (c) AlignGen: apply_aligngen's patcher (a wrapper that hooks the reference-only LoRA onto the target
      Linears for the pass, and the selective text mask) with the `refcustom_aligngen` payload;
  (d) AlignGen's patcher on a pass without payload or reference (the plain negative prompt);
  diagnostics: (b) + the reference LoRA hooks only (no mask), and (b) + the selective attention
  override only (on plain FLUX).

Rounds are interleaved (their order reversed every other round); medians and minima are printed.
Between passes no hook may remain on the model (checked at every load).

Target: (c)/(b) <= 1.05, i.e. AlignGen costs at most 5% over the reference tokens' own cost.
Then the DEM: a forward hook on it (and on all its submodules) counts calls while N sampling steps
run with the AlignGen patcher and payload, once as a bare Euler loop on the diffusion model and once
through ComfyUI's CFGGuider + euler sampler with the conditioning the node's functions build; then
the node's DEM path (nodes/aligngen_conditioning.apply_dem, the DEM a ModelPatcher that ComfyUI loads
where and in the dtype it keeps text encoders: fp16 weights, float32 compute) runs once, counted and
timed. No assertions: figures only. Run with ComfyUI's python:

    ~/ComfyUI/.venv/bin/python bench/aligngen_cost.py                      # CPU-sized default
    ~/ComfyUI/.venv/bin/python bench/aligngen_cost.py --preset flux-1024   # GPU: FLUX.1 size, 1024^2, 512^2 ref

Measured on this 2-core CPU (cpu-small: hidden 512, 2+4 blocks, 1024 noise + 256 reference + 128 text
tokens; DEM 269M parameters, 8 heads), `--threads 1 --repeats 10`, about 95 s wall a run. The reference
LoRA as per-pass hooks (this revision) and as the object-patched Linear copies it replaced (commit
ff32e4e, its own bench), three runs each, alternating old/new on the same otherwise idle machine:

    (c)/(b) medians    hooks 1.029 / 1.011 / 1.066 (mean 1.035)   Linear copies 1.047 / 1.043 / 1.011 (mean 1.034)
    LoRA only / (b)    hooks 0.986 / 1.037 / 0.998 (mean 1.007)   Linear copies 1.029 / 1.007 / 1.022 (mean 1.019)
    two more runs of this revision: (c)/(b) 1.052 and 1.028; (d)/(a) 0.96-0.98 (no cost without a payload)
    noise floor about +-5% (single diagnostics swing 0.85-1.08 of minima): the hooks cost what the copies cost,
    a few % at most over the reference tokens' own cost ((b)/(a) = 1.33-1.49)
    DEM calls: node 1, sampling 4 steps 0 (bare Euler loop and ComfyUI's euler sampler), AlignGen's hook present
    on double_blocks.0.img_attn.qkv in every sampling pass and on no module between passes
    DEM one-off: 1.1-1.3 s warm with fp16 weights cast to float32 per layer on the CPU (0.7 s when it was kept
    in float32 outside ComfyUI's management), once per prompt

Use --threads 1 on a shared CPU (with 2 threads contention swung single passes by +-40%), or the
flux-1024 preset on a GPU (not run here: no GPU was lent).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import statistics
import time
from pathlib import Path

from random_flux import build_random_flux, import_host, preset_arguments

T5_WIDTH = REDUX_WIDTH = 4096
REDUX_TOKENS = 729
RANK = 16
CONCEPT_START, CONCEPT_END = 3, 6


def random_aligngen(cfg: dict, heads: int, aligngen, aligngen_weights):
    """AlignGenWeights for this FLUX: random S*, a DEM that is not the identity, rank-16 LoRAs on every block."""
    import torch

    g = torch.Generator().manual_seed(0)
    dem = aligngen.DeviationExtractionModule(T5_WIDTH, REDUX_WIDTH, heads=heads)  # ~270M parameters, allocated once
    with torch.no_grad():  # a fresh DEM's output projections are zero (identity); a trained one's are not
        for layer in dem.output_layers:
            layer.weight.normal_(0, 0.02, generator=g)
            layer.bias.normal_(0, 0.02, generator=g)
    hidden = cfg["hidden"]

    def lora(target: str, rows: int, inputs: int):
        return aligngen_weights.ReferenceLoRA(target, torch.randn(RANK, inputs, generator=g) / inputs ** 0.5,
                                              torch.randn(rows, RANK, generator=g) * 0.02)

    loras = []
    for i in range(cfg["depth"]):
        loras += [lora(f"double_blocks.{i}.img_attn.qkv", 3 * hidden, hidden),
                  lora(f"double_blocks.{i}.img_attn.proj", hidden, hidden)]
    for i in range(cfg["single"]):
        loras += [lora(f"single_blocks.{i}.linear1", 3 * hidden, hidden),
                  lora(f"single_blocks.{i}.linear2", hidden, hidden + 4 * hidden)]
    return aligngen_weights.AlignGenWeights(torch.randn(T5_WIDTH, generator=g), dem.eval(), tuple(loras), 1.0, "S*",
                                            Path("bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="sampling steps while DEM calls are counted")
    parser.add_argument("--dem-heads", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 is steadier on a CPU that other jobs share")
    args, cfg, repeats = preset_arguments(__doc__, parser)

    package = import_host()
    import comfy.model_management
    import comfy.ops
    import comfy.patcher_extension
    import comfy.samplers
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    aligngen = importlib.import_module(f"{package.__name__}.model.aligngen")
    aligngen_weights = importlib.import_module(f"{package.__name__}.model.aligngen_weights")
    aligngen_patch = importlib.import_module(f"{package.__name__}.nodes.aligngen_patch")
    aligngen_loader = importlib.import_module(f"{package.__name__}.nodes.aligngen_loader")
    aligngen_conditioning = importlib.import_module(f"{package.__name__}.nodes.aligngen_conditioning")

    patcher, device, dtype = build_random_flux(cfg)
    flux = patcher.model.diffusion_model
    weights = random_aligngen(cfg, args.dem_heads, aligngen, aligngen_weights)
    # The DEM as Load AlignGen builds it: ComfyUI's manual-cast ops, the text encoders' dtype.
    dem_dtype = aligngen_loader.dem_devices()[2]
    weights = dataclasses.replace(weights, dem=aligngen.DeviationExtractionModule.from_state_dict(
        weights.dem.state_dict(), heads=args.dem_heads, operations=comfy.ops.manual_cast, dtype=dem_dtype).eval())
    aligngen_patcher = aligngen_loader.apply_aligngen(patcher, weights, 1.0)
    managed = aligngen_loader.managed(weights)  # the DEM as Load AlignGen hands it over: a ComfyUI-managed model
    payload = aligngen_patch.AlignGenConditioning(concept_start=CONCEPT_START, concept_end=CONCEPT_END, reference_slot=0)

    latent = cfg["image"] // 8
    ref_latent = cfg["ref"] // 8
    x = torch.randn(1, 16, latent, latent, device=device, dtype=dtype)
    ref = torch.randn(1, 16, ref_latent, ref_latent, device=device, dtype=dtype)
    context = torch.randn(1, cfg["text"], T5_WIDTH, device=device, dtype=dtype)
    y = torch.randn(1, 768, device=device, dtype=dtype)
    t = torch.tensor([0.5], device=device)
    g = torch.tensor([3.5], device=device)
    redux = torch.randn(1, REDUX_TOKENS, REDUX_WIDTH)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    target_linear = flux.double_blocks[0].img_attn.qkv

    def load(model_patcher):
        """Load a patcher; between passes no module may carry a hook of ours (they live for one pass)."""
        comfy.model_management.load_models_gpu([model_patcher], force_full_load=True)
        if target_linear._forward_hooks:
            raise RuntimeError("a reference-LoRA hook outlived its pass")

    def forward(model_patcher, latent_in, timestep, with_ref: bool, with_payload: bool, options=None):
        kwargs = {aligngen_patch.ALIGNGEN_COND_KEY: payload} if with_payload else {}
        options = {"wrappers": model_patcher.wrappers, **(options or {})}
        with torch.no_grad():
            out = flux(latent_in, timestep, context, y=y, guidance=g, ref_latents=[ref] if with_ref else None,
                       ref_latents_method="uxo", transformer_options=options, **kwargs)
        sync()
        return out

    noise_tokens = (latent // 2) ** 2
    ref_tokens = (ref_latent // 2) ** 2
    total = cfg["text"] + noise_tokens + ref_tokens

    [wrapper] = aligngen_patcher.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                              aligngen_patch.ALIGNGEN_WRAPPER_KEY)

    def lora_only():  # diagnostic: the reference-LoRA hooks on the trailing reference rows, no mask
        with wrapper.lora.attached(flux, ref_tokens):
            forward(patcher, x, t, True, False)

    def mask_only():  # diagnostic: the selective attention override alone, on plain FLUX + reference
        override = aligngen_patch.SelectiveAttentionOverride(aligngen_patch.concept_rows(payload, 1, cfg["text"]),
                                                             (total - ref_tokens, total))
        forward(patcher, x, t, True, False, {"optimized_attention_override": override})

    variants = {  # name: (patcher to load, pass)
        "a": (patcher, lambda: forward(patcher, x, t, False, False)),
        "b": (patcher, lambda: forward(patcher, x, t, True, False)),
        "c": (aligngen_patcher, lambda: forward(aligngen_patcher, x, t, True, True)),
        "d": (aligngen_patcher, lambda: forward(aligngen_patcher, x, t, False, False)),
        "lora": (aligngen_patcher, lora_only),
        "mask": (patcher, mask_only),
    }
    times = {name: [] for name in variants}
    for round_ in range(repeats + 1):  # one warm-up round, then interleaved rounds, the order reversed every other one
        timed = round_ > 0
        for name, (model_patcher, run) in (list(variants.items())[::-1] if round_ % 2 else variants.items()):
            load(model_patcher)  # not timed; a no-op swap when the same patcher stays loaded
            start = time.perf_counter()
            run()
            if timed:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(v) for name, v in times.items()}

    # --- The DEM: counted during sampling (must be 0) and in the node's path (1). ---
    calls = {"dem": 0, "submodules": 0}
    hooks = [weights.dem.register_forward_hook(lambda *_: calls.__setitem__("dem", calls["dem"] + 1))]
    hooks += [m.register_forward_hook(lambda *_: calls.__setitem__("submodules", calls["submodules"] + 1))
              for m in weights.dem.modules() if m is not weights.dem]

    load(aligngen_patcher)
    reference_rows = []  # per pass: the forward hooks on double_blocks.0.img_attn.qkv (1 = AlignGen's is there)
    probe = target_linear.register_forward_pre_hook(lambda *_: reference_rows.append(len(target_linear._forward_hooks)))
    steps = args.steps
    sample = torch.randn_like(x)
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    start = time.perf_counter()
    for i in range(steps):  # bare Euler loop on the flow: x <- x - dt * v
        v = forward(aligngen_patcher, sample, sigmas[i:i + 1].to(device), True, True)
        sample = sample - (sigmas[i] - sigmas[i + 1]).item() * v
    loop_time = time.perf_counter() - start
    loop_calls, loop_sub, loop_passes = calls["dem"], calls["submodules"], list(reference_rows)

    # The node's DEM path, once, on a fake prompt conditioning.
    conditioning = [[context, {"pooled_output": y, "guidance": 3.5}]]
    calls.update(dem=0, submodules=0)
    start = time.perf_counter()
    conditioning = aligngen_conditioning.apply_dem(conditioning, managed.dem, CONCEPT_START, CONCEPT_END, redux)
    dem_time = time.perf_counter() - start
    node_calls, node_sub = calls["dem"], calls["submodules"]
    positive = aligngen_conditioning.with_aligngen_reference(conditioning, ref, CONCEPT_START, CONCEPT_END)

    # ComfyUI's own sampler on that conditioning (cfg 1: the positive branch only).
    calls.update(dem=0, submodules=0)
    reference_rows.clear()
    guider = comfy.samplers.CFGGuider(aligngen_patcher)
    guider.set_conds(positive, positive)
    guider.set_cfg(1.0)
    start = time.perf_counter()
    with torch.no_grad():
        guider.sample(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)), torch.zeros(x.shape),
                      comfy.samplers.sampler_object("euler"), sigmas, seed=0, disable_pbar=True)
    sync()
    sampler_time = time.perf_counter() - start
    sampler_calls, sampler_sub, sampler_passes = calls["dem"], calls["submodules"], list(reference_rows)
    probe.remove()
    for hook in hooks:
        hook.remove()

    # Warm DEM time (the counted call above includes loading it), where and how ComfyUI keeps it.
    warm = []
    for _ in range(3):
        start = time.perf_counter()
        aligngen_conditioning.apply_dem([[context, {}]], managed.dem, CONCEPT_START, CONCEPT_END, redux)
        sync()
        warm.append(time.perf_counter() - start)
    dem_warm = statistics.median(warm)

    dem_params = sum(p.numel() for p in weights.dem.parameters())
    print(f"device={device} dtype={dtype} preset={args.preset} hidden={cfg['hidden']} blocks={cfg['depth']}+{cfg['single']} "
          f"image={cfg['image']}px ({noise_tokens} tokens) ref={cfg['ref']}px ({ref_tokens} tokens) text={cfg['text']} "
          f"repeats={repeats} threads={torch.get_num_threads()}")
    dem_where = f"{next(managed.dem.model.parameters()).dtype} on {managed.dem.load_device}"
    print(f"AlignGen: {len(weights.loras)} rank-{RANK} reference LoRAs, DEM {dem_params / 1e6:.0f}M parameters "
          f"(width {T5_WIDTH}, {args.dem_heads} heads, {dem_where}), Redux {REDUX_TOKENS} tokens, "
          f"concept rows [{CONCEPT_START}, {CONCEPT_END})")
    labels = {"a": "(a) plain FLUX", "b": "(b) + core reference (uxo)", "c": "(c) + AlignGen (LoRA + mask)",
              "d": "(d) AlignGen model, no payload", "lora": "    (b) + reference LoRA only", "mask": "    (b) + selective mask only"}
    fastest = {name: min(v) for name, v in times.items()}
    print(f"{'variant':<34}{'median s/step':>14}{'min':>10}{'max':>10}")
    for name, label in labels.items():
        print(f"{label:<34}{median[name]:>14.4f}{fastest[name]:>10.4f}{max(times[name]):>10.4f}")
    print(f"{'ratio':<58}{'of medians':>12}{'of minima':>11}")
    for label, top, bottom in (("(c)/(b) AlignGen over the reference tokens' own cost", "c", "b"),
                               ("(b)/(a) the reference tokens' own cost", "b", "a"),
                               ("(c)/(a) AlignGen step vs plain FLUX", "c", "a"),
                               ("(d)/(a) AlignGen model on a pass without payload", "d", "a"),
                               ("LoRA only / (b)", "lora", "b"),
                               ("selective mask only / (b)", "mask", "b")):
        print(f"{label:<58}{median[top] / median[bottom]:>12.3f}{fastest[top] / fastest[bottom]:>11.3f}")
    ratio = median["c"] / median["b"]
    print(f"target (c)/(b) <= 1.05 on medians: {'met' if ratio <= 1.05 else 'NOT met'} ({ratio:.3f})")
    print(f"DEM calls: node {node_calls}, sampling {steps} steps {loop_calls + sampler_calls}  (node: {node_sub} "
          f"submodule calls; bare Euler loop: {loop_calls} DEM / {loop_sub} submodule calls; ComfyUI euler sampler: "
          f"{sampler_calls} DEM / {sampler_sub} submodule calls)")
    print(f"AlignGen active during sampling (forward hooks on double_blocks.0.img_attn.qkv per pass; 1 = AlignGen's "
          f"reference LoRA is there): "
          f"bare loop {loop_passes}, ComfyUI sampler {sampler_passes}")
    print(f"sampling wall time: bare loop {loop_time:.3f} s ({loop_time / steps:.4f} s/step), "
          f"ComfyUI sampler {sampler_time:.3f} s ({sampler_time / steps:.4f} s/step)")
    print(f"DEM one-off (node's path, {dem_where}): first call with loading {dem_time:.3f} s, warm median "
          f"{dem_warm:.3f} s")
    print(f"DEM warm one-off vs one AlignGen step ({median['c']:.4f} s): {dem_warm / median['c']:.2f} steps' worth, "
          f"paid once per prompt; per step it would be +{dem_warm / median['c']:.0%}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
