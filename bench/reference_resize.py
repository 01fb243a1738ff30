"""Reference resize: OpenCV INTER_AREA on uint8 (now) vs kornia's antialiased bilinear (previous).

One line per reference size: the time and peak extra memory of `prepare_reference(image, "ip", 512)`
without and with a subject MASK (whitening), now and previously. Each measurement runs in a fresh
subprocess: the input IMAGE (float [1, H, W, 3] on the uint8 grid, as LoadImage makes it) is built
in place first, then the peak resident memory (ru_maxrss) above that point is the preprocessing's
own extra memory. Time: the median of `--repeats` calls. The previous path is skipped above
6000x4000 (it needs tens of seconds and several GB there). Target: up to 8000x8000 well under a
second, extra memory about the uint8 copy plus the output.

Then the worst accepted cases (model/reference_preprocess.py refuses larger): one image at
MAX_REFERENCE_PIXELS and the largest batch, MAX_REFERENCE_BATCH_PIXELS in all, now only.

Last, with a ComfyUI host, the pixel size Shared Attention Reference's VAE encodes for a 6000x4000
upload sampled at 1024x1024: the upload's size before (it encoded at node time), the latent's pixel
size now (recorded by a stand-in VAE through the node's own sampling-time path).

    ~/ComfyUI/.venv/bin/python bench/reference_resize.py
    .venv/bin/python bench/reference_resize.py --skip-node     # no ComfyUI host needed
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = [(1024, 1024), (2048, 1536), (4000, 3000), (6000, 4000), (8000, 8000)]  # width x height
PREVIOUS_MAX_PIXELS = 6000 * 4000
LIMIT_SIDE = 12649  # isqrt(MAX_REFERENCE_PIXELS): the largest square accepted
LIMIT_CASES = [(1, LIMIT_SIDE, LIMIT_SIDE), (16, 4000, 4000)]  # batch, width, height; 16 x 16 MP = the batch limit


def previous_prepare_reference(image, task, ref_res=512, mask=None):
    """Copied from model/reference_preprocess.py before the OpenCV change (commit bb701b5), task ip/style
    only: the float image whitened at full size, then kornia's antialiased bilinear resize."""
    import kornia

    from refcustom.model.reference_preprocess import area_resize_size, normalize_mask

    image = image[..., :3].float()
    if mask is not None:
        alpha = normalize_mask(mask, image).to(image).unsqueeze(-1)
        image = image * alpha + (1.0 - alpha)
    size = area_resize_size(image.shape[1], image.shape[2], ref_res)
    out = kornia.geometry.transform.resize(image.movedim(-1, 1), size, interpolation="bilinear", antialias=True)
    return out.movedim(1, -1).clamp(0.0, 1.0)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(method: str, width: int, height: int, masked: bool, repeats: int, batch: int = 1) -> dict:
    """One measurement, in its own process; returns seconds (median) and peak extra MiB."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from random_flux import import_package

    import_package()
    import torch

    from refcustom.model.reference_preprocess import prepare_reference

    run = prepare_reference if method == "now" else previous_prepare_reference
    torch.set_grad_enabled(False)
    image = torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(0))
    image.mul_(255.0).round_().div_(255.0)  # in place: the input is the only full-size array so far
    mask = None
    if masked:
        mask = torch.zeros(batch, height, width)
        mask[:, height // 8 : height * 7 // 8, width // 8 : width * 7 // 8] = 1.0
    small = torch.rand(1, 64, 64, 3)
    run(small, "ip", 32, None if mask is None else torch.ones(1, 64, 64))  # lazy imports and thread pools
    base = peak_rss_mib()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run(image, "ip", 512, mask)
        times.append(time.perf_counter() - start)
        del out
    return {"seconds": statistics.median(times), "extra_mib": peak_rss_mib() - base}


def measure(method: str, width: int, height: int, masked: bool, repeats: int, batch: int = 1) -> dict:
    command = [sys.executable, __file__, "--worker", method, str(width), str(height), str(int(masked)), str(repeats),
               str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def node_encode_sizes() -> str:
    """Shared Attention Reference: what the VAE is asked to encode, 6000x4000 upload, 1024x1024 latent."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from random_flux import import_host

    package = import_host()
    import importlib

    import torch

    patch = importlib.import_module(f"{package.__name__}.nodes.shared_attention_patch")

    class StandInVAE:  # records the encode input; returns zeros of the FLUX latent shape
        shapes = []

        def spacial_compression_encode(self):
            return 8

        def encode(self, pixels):
            self.shapes.append(tuple(pixels.shape[1:3]))
            return torch.zeros(pixels.shape[0], 16, pixels.shape[1] // 8, pixels.shape[2] // 8)

    upload = torch.rand(1, 4000, 6000, 3)
    vae = StandInVAE()
    references = patch.ReferenceImages(upload[..., :3], vae, lambda latent: latent)
    wrapper = patch.ReferenceEncodeWrapper(references)
    wrapper(lambda *args, **kwargs: None, torch.zeros(1, 16, 128, 128), torch.zeros(1, 16, 128, 128))
    ((height, width),) = vae.shapes
    return (
        f"Shared Attention Reference, 6000x4000 upload sampled at 1024x1024: VAE encode input before "
        f"6000x4000 (the upload, at node time), now {width}x{height} (the latent's pixel size, when sampling starts)"
    )


def limit_cases(repeats: int) -> None:
    """The worst inputs the limits accept: time and peak extra memory, now only."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from random_flux import import_package

    import_package()
    from refcustom.model.reference_preprocess import MAX_REFERENCE_BATCH_PIXELS, MAX_REFERENCE_PIXELS

    assert LIMIT_SIDE * LIMIT_SIDE <= MAX_REFERENCE_PIXELS < (LIMIT_SIDE + 1) ** 2
    print(
        f"worst accepted cases: MAX_REFERENCE_PIXELS {MAX_REFERENCE_PIXELS / 1e6:.0f} MP per image, "
        f"MAX_REFERENCE_BATCH_PIXELS {MAX_REFERENCE_BATCH_PIXELS / 1e6:.0f} MP per batch"
    )
    for batch, width, height in LIMIT_CASES:
        assert batch * width * height <= MAX_REFERENCE_BATCH_PIXELS
        input_mib = batch * width * height * 3 * 4 / 2**20
        now = measure("now", width, height, False, repeats, batch)
        now_mask = measure("now", width, height, True, repeats, batch)
        label = f"{batch} x {width}x{height}"
        print(
            f"{label:>17} ({batch * width * height / 1e6:.0f} MP, input {input_mib:.0f} MiB) | {now['seconds']:>6.3f} s "
            f"{now['extra_mib']:>6.0f} MiB | mask {now_mask['seconds']:>6.3f} s {now_mask['extra_mib']:>6.0f} MiB",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-node", action="store_true", help="skip the Shared Attention Reference line")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, width, height, masked, repeats, batch = args.worker
        print(json.dumps(worker(method, int(width), int(height), bool(int(masked)), int(repeats), int(batch))))
        return

    import cv2
    import torch

    print(
        f"prepare_reference(image, 'ip', ref_res=512); torch threads {torch.get_num_threads()}, OpenCV threads "
        f"{cv2.getNumThreads()}; median of {args.repeats}; extra = peak RSS above the built input (fresh process)"
    )
    header = (
        f"{'size':>10} {'input MiB':>9} | {'now s':>6} {'+MiB':>6} {'mask s':>6} {'+MiB':>6} |"
        f" {'previous s':>10} {'+MiB':>6} {'mask s':>7} {'+MiB':>6} | {'speed-up':>8} {'mask':>6}"
    )
    print(header)
    for width, height in SIZES:
        input_mib = width * height * 3 * 4 / 2**20
        now = measure("now", width, height, False, args.repeats)
        now_mask = measure("now", width, height, True, args.repeats)
        line = (
            f"{width:>5}x{height:<4} {input_mib:>9.0f} | {now['seconds']:>6.3f} {now['extra_mib']:>6.0f} "
            f"{now_mask['seconds']:>6.3f} {now_mask['extra_mib']:>6.0f} |"
        )
        if width * height <= PREVIOUS_MAX_PIXELS:
            old = measure("previous", width, height, False, args.repeats)
            old_mask = measure("previous", width, height, True, args.repeats)
            line += (
                f" {old['seconds']:>10.3f} {old['extra_mib']:>6.0f} {old_mask['seconds']:>7.3f} "
                f"{old_mask['extra_mib']:>6.0f} | {old['seconds'] / now['seconds']:>7.1f}x "
                f"{old_mask['seconds'] / now_mask['seconds']:>5.1f}x"
            )
        else:
            line += f" {'skipped (above 6000x4000)':>32} |"
        print(line, flush=True)
    limit_cases(args.repeats)
    if not args.skip_node:
        print(node_encode_sizes())


if __name__ == "__main__":
    main()
