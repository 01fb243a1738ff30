"""Per-step cost of DreamO references on ComfyUI's FLUX, against the token-count model.

Runs, side by side in one process and interleaved, the FLUX forward of a random-weight model
(ComfyUI's own classes) for plain FLUX and for FLUX + DreamO with k references (k = 1, 3), and
prints each measured time ratio against the ratio the token-count model predicts:

    t(S) = a S + b S^2        S = text + noise + k * reference tokens

Linear layers grow with S, attention with S^2. Two versions of the coefficients are printed:
- FLOP model: a = 12 D^2, b = 2 D per block (qkv + proj + 4x MLP, or linear1 + linear2; QK^T + AV);
- calibrated model (the target): a and b fitted to plain FLUX (no references) timed at three other
  image sizes in the same run, since a device's attention and matmul throughput differ.
Target: each DreamO variant within 10% of the calibrated model, i.e. references cost what their
tokens cost and nothing more. Run with ComfyUI's python:

    ~/ComfyUI/.venv/bin/python bench/dreamo_reference_cost.py            # CPU-sized default
    ~/ComfyUI/.venv/bin/python bench/dreamo_reference_cost.py --preset flux-1024   # GPU: FLUX.1 size, 1024^2, 512^2 refs
"""

from __future__ import annotations

import os
import statistics
import time

from random_flux import build_dreamo_flux, fit_token_cost, import_host, preset_arguments


def main() -> None:
    args, cfg, repeats = preset_arguments(__doc__)
    package = import_host()
    import torch

    flux, device, dtype, dreamo_options, dreamo_conditioning, dreamo_patch = build_dreamo_flux(package, cfg)

    latent = cfg["image"] // 8
    ref_latent = cfg["ref"] // 8
    x = torch.randn(1, 16, latent, latent, device=device, dtype=dtype)
    refs = [torch.randn(1, 16, ref_latent, ref_latent, device=device, dtype=dtype) for _ in range(3)]
    context = torch.randn(1, cfg["text"], 4096, device=device, dtype=dtype)
    y = torch.randn(1, 768, device=device, dtype=dtype)
    t = torch.tensor([0.5], device=device)
    g = torch.tensor([3.5], device=device)

    def run(k: int, dreamo: bool = True):
        kwargs, options, ref_latents = {}, {}, None
        if k:
            ref_latents = refs[:k]
            references = dreamo_conditioning.DreamOReferenceSet(
                tuple(dreamo_conditioning.DreamOReference(index=i + 1, slot=i) for i in range(k)))
            kwargs = {"ref_latents_method": "uxo", dreamo_patch.DREAMO_COND_KEY: references}
            options = dreamo_options if dreamo else {}
            if not dreamo:
                kwargs.pop(dreamo_patch.DREAMO_COND_KEY)
        with torch.no_grad():
            flux(x, t, context, y=y, guidance=g, ref_latents=ref_latents, transformer_options=options, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Plain FLUX at other image sizes (no references) to fit the calibrated token-count model.
    calibration = {w: torch.randn(1, 16, latent, w, device=device, dtype=dtype) for w in (latent // 2, latent * 3 // 2, latent * 2)}

    def run_plain(width: int):
        with torch.no_grad():
            flux(calibration[width], t, context, y=y, guidance=g, transformer_options={})
        if device.type == "cuda":
            torch.cuda.synchronize()

    variants = [(f"k{k}", lambda k=k: run(k)) for k in (0, 1, 3)]
    variants += [("core1", lambda: run(1, dreamo=False)), ("core3", lambda: run(3, dreamo=False))]
    variants += [(f"w{w}", lambda w=w: run_plain(w)) for w in calibration]
    for _, fn in variants:  # warm-up
        fn()
    times = {name: [] for name, _ in variants}
    for _ in range(repeats):  # interleaved, so drift hits every variant alike
        for name, fn in variants:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    noise_tokens = (latent // 2) ** 2
    ref_tokens = (ref_latent // 2) ** 2
    blocks = cfg["depth"] + cfg["single"]
    d = cfg["hidden"]
    median = {name: statistics.median(v) for name, v in times.items()}

    def tokens(k: int) -> int:
        return cfg["text"] + noise_tokens + k * ref_tokens

    def flop_cost(s: int) -> float:
        return blocks * (12 * d * d * s + 2 * d * s * s)

    # Least-squares fit of t(S) = a S + b S^2 through the plain runs (the k = 0 run included).
    points = [(tokens(0), median["k0"])] + [
        (cfg["text"] + (latent // 2) * (w // 2), median[f"w{w}"]) for w in calibration]
    a, b = fit_token_cost(points)

    def fitted_cost(s: int) -> float:
        return a * s + b * s * s

    print(f"device={device} dtype={dtype} preset={args.preset} hidden={d} blocks={cfg['depth']}+{cfg['single']} "
          f"image={cfg['image']}px ({noise_tokens} tokens) refs={cfg['ref']}px ({ref_tokens} tokens each) "
          f"text={cfg['text']} repeats={repeats} threads={torch.get_num_threads()}")
    print(f"calibrated t(S) = {a:.3e} S + {b:.3e} S^2 from plain FLUX at S = {[p[0] for p in points]}")
    print(f"{'variant':<26}{'median s/step':>14}{'measured':>10}{'FLOP model':>12}{'calibrated':>12}{'meas/calib':>12}  within 10%")
    ok = True
    rows = [("plain FLUX", "k0", 0), ("FLUX + 1 DreamO ref", "k1", 1), ("FLUX + 3 DreamO refs", "k3", 3),
            ("FLUX + 1 core ref (uxo)", "core1", 1), ("FLUX + 3 core refs (uxo)", "core3", 3)]
    for label, key, k in rows:
        measured = median[key] / median["k0"]
        flop = flop_cost(tokens(k)) / flop_cost(tokens(0))
        calibrated = fitted_cost(tokens(k)) / fitted_cost(tokens(0))
        within = abs(measured / calibrated - 1) <= 0.10
        ok &= within
        print(f"{label:<26}{median[key]:>14.4f}{measured:>10.3f}{flop:>12.3f}{calibrated:>12.3f}"
              f"{measured / calibrated:>12.3f}  {'yes' if within else 'NO'}")
    for k in (1, 3):
        print(f"DreamO embeddings vs core reference latents alone ({k} ref): {median[f'k{k}'] / median[f'core{k}'] - 1:+.1%}")
    print("RESULT:", "all within 10% of the calibrated token-count model" if ok
          else "some variant is off the calibrated token-count model by >10%")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
