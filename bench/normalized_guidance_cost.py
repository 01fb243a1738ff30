"""Per-step cost of the SynCD normalized guider against ComfyUI's DualCFGGuider.

Same random-weight FLUX (ComfyUI's classes), same three conditionings (prompt + one reference
latent, neutral prompt + the reference, neutral prompt alone), same sampler and sigmas; the two
guiders are timed interleaved in one run. Both evaluate the three branches through
`calc_cond_batch`, so the difference is the combination itself (per-sample norms). Target: <= 1.03x.

    ~/ComfyUI/.venv/bin/python bench/normalized_guidance_cost.py [--preset flux-1024]
"""

from __future__ import annotations

import argparse
import statistics
import time

from random_flux import build_random_flux, import_host, preset_arguments, syncd_guiders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    args, cfg, repeats = preset_arguments(__doc__, parser)

    package = import_host()
    import comfy.samplers
    import torch

    patcher, device, dtype = build_random_flux(cfg)
    guiders = syncd_guiders(package, patcher, cfg)
    g = torch.Generator().manual_seed(0)
    latent = cfg["image"] // 8

    noise = torch.randn(1, 16, latent, latent, generator=g)
    sigmas = torch.linspace(1.0, 0.0, args.steps + 1)
    sampler = comfy.samplers.sampler_object("euler")

    def run(guider):
        start = time.perf_counter()
        out = guider.sample(noise, torch.zeros_like(noise), sampler, sigmas, seed=0, disable_pbar=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        assert torch.isfinite(out).all()
        return (time.perf_counter() - start) / args.steps

    for guider in guiders.values():  # warm-up (loads the model)
        run(guider)
    times = {name: [] for name in guiders}
    for _ in range(repeats):
        for name, guider in guiders.items():
            times[name].append(run(guider))

    base = statistics.median(times["DualCFGGuider"])
    print(f"device={device} dtype={dtype} preset={args.preset} image={cfg['image']}px + 1 reference {cfg['ref']}px, "
          f"text={cfg['text']}, steps={args.steps}, repeats={repeats}, threads={torch.get_num_threads()}")
    for name in guiders:
        median = statistics.median(times[name])
        print(f"{name:<26} {median:.4f} s/step  {median / base:.3f}x")
    ratio = statistics.median(times["NormalizedGuidanceGuider"]) / base
    print("RESULT:", f"normalized guider {ratio:.3f}x DualCFGGuider per step", "(target <= 1.03x: met)" if ratio <= 1.03
          else "(target <= 1.03x: NOT met)")


if __name__ == "__main__":
    main()
