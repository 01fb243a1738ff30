"""What DreamO's official T5 length (512 tokens) costs per sampling step against ComfyUI's 256.

DreamO Text Encode pads T5 to `t5_length` (default 512, the official `max_sequence_length`);
CLIPTextEncode gives FLUX 256. FLUX attends over text + image + reference tokens in every block,
so the extra 256 padding tokens cost linear-layer and attention work. This runs, side by side and
interleaved in one process, one FLUX forward (ComfyUI's own classes, random weights) with a DreamO
reference at each text length, and prints the measured ratio next to the FLOP model's

    t(S) = blocks * (12 D^2 S + 2 D S^2)        S = text + noise + reference tokens

for the preset and for FLUX.1-dev at 1024^2 with 512^2 references (the FLOP ratio only; run
`--preset flux-1024` on a GPU for the measured one). Run with ComfyUI's python:

    ~/ComfyUI/.venv/bin/python bench/dreamo_t5_length_cost.py [--preset flux-1024]
"""

from __future__ import annotations

import statistics
import time

from random_flux import build_dreamo_flux, import_host, preset_arguments

LENGTHS = (256, 512)


def flop_cost(blocks: int, d: int, s: int) -> float:
    return blocks * (12 * d * d * s + 2 * d * s * s)


def main() -> None:
    args, cfg, repeats = preset_arguments(__doc__)
    package = import_host()
    import torch

    flux, device, dtype, options, dreamo_conditioning, dreamo_patch = build_dreamo_flux(package, cfg)

    latent, ref_latent = cfg["image"] // 8, cfg["ref"] // 8
    x = torch.randn(1, 16, latent, latent, device=device, dtype=dtype)
    ref = torch.randn(1, 16, ref_latent, ref_latent, device=device, dtype=dtype)
    references = dreamo_conditioning.DreamOReferenceSet((dreamo_conditioning.DreamOReference(index=1, slot=0),))
    kwargs = {"ref_latents_method": "uxo", dreamo_patch.DREAMO_COND_KEY: references}
    contexts = {n: torch.randn(1, n, 4096, device=device, dtype=dtype) for n in LENGTHS}
    y = torch.randn(1, 768, device=device, dtype=dtype)
    t, g = torch.tensor([0.5], device=device), torch.tensor([3.5], device=device)

    def run(n: int):
        with torch.no_grad():
            flux(x, t, contexts[n], y=y, guidance=g, ref_latents=[ref], transformer_options=options, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for n in LENGTHS:  # warm-up
        run(n)
    times = {n: [] for n in LENGTHS}
    for _ in range(repeats):  # interleaved, so drift hits both alike
        for n in LENGTHS:
            start = time.perf_counter()
            run(n)
            times[n].append(time.perf_counter() - start)
    median = {n: statistics.median(v) for n, v in times.items()}

    image_tokens, ref_tokens = (latent // 2) ** 2, (ref_latent // 2) ** 2
    blocks, d = cfg["depth"] + cfg["single"], cfg["hidden"]
    print(f"device={device} dtype={dtype} preset={args.preset} hidden={d} blocks={cfg['depth']}+{cfg['single']} "
          f"image={cfg['image']}px ({image_tokens} tokens) 1 DreamO ref={cfg['ref']}px ({ref_tokens} tokens) "
          f"repeats={repeats} threads={torch.get_num_threads()}")
    for n in LENGTHS:
        print(f"t5_length {n}: median {median[n]:.4f} s/step")
    measured = median[512] / median[256]
    flop = flop_cost(blocks, d, 512 + image_tokens + ref_tokens) / flop_cost(blocks, d, 256 + image_tokens + ref_tokens)
    print(f"512 vs 256 per step, this preset: measured x{measured:.3f} ({measured - 1:+.1%}), FLOP model x{flop:.3f}")
    for refs in (1, 2, 3):  # FLUX.1-dev: 57 blocks of width 3072, 1024^2 image, 512^2 references
        s = 4096 + refs * 1024
        ratio = flop_cost(57, 3072, 512 + s) / flop_cost(57, 3072, 256 + s)
        print(f"FLUX.1-dev 1024^2 + {refs} ref(s) of 512^2, FLOP model: 512 vs 256 = x{ratio:.3f} ({ratio - 1:+.1%})")


if __name__ == "__main__":
    main()
