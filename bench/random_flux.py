"""Shared by the benchmarks: find the ComfyUI host, import the pack, build a random-weight FLUX with
ComfyUI's own classes. Sizes come from PRESETS."""

from __future__ import annotations

import argparse
import importlib
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "refcustom"

PRESETS = {
    # hidden, heads, rope axes, double/single blocks, image px, reference px, text tokens, repeats
    "cpu-tiny": dict(hidden=256, heads=2, axes=[16, 56, 56], depth=1, single=2, image=256, ref=128, text=32, repeats=3),
    "cpu-small": dict(hidden=512, heads=4, axes=[16, 56, 56], depth=2, single=4, image=512, ref=256, text=128, repeats=5),
    "flux-1024": dict(hidden=3072, heads=24, axes=[16, 56, 56], depth=19, single=38, image=1024, ref=512, text=512, repeats=10),
}


def import_package():
    """`import refcustom` from this checkout without ComfyUI (the repo root is the package, whatever the
    folder's name): what the training benchmarks need."""
    module = sys.modules.get(PACKAGE)
    if module is not None:
        return module
    load_module = runpy.run_path(str(REPO / "scripts" / "load_by_path.py"))["load_module"]
    return load_module(PACKAGE, REPO / "__init__.py", package_dir=REPO)


def import_host():
    """Put ComfyUI on sys.path (CPU mode without CUDA) and return the pack as a package."""
    sys.path.insert(0, str(REPO / "tests"))
    from comfy_host import find_comfyui

    root = find_comfyui()
    if root is None:
        raise SystemExit("no ComfyUI host found: set COMFYUI_PATH or run scripts/setup_host.sh")
    sys.path.insert(0, str(root))
    import comfy.cli_args
    import torch

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    if str(REPO.parent) not in sys.path:
        sys.path.insert(0, str(REPO.parent))
    return importlib.import_module(REPO.name)


def build_random_flux(cfg: dict):
    """(ModelPatcher, device, dtype) for a FLUX.1-dev-shaped model with N(0, 0.02) weights."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    device = comfy.model_management.get_torch_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    unet_config = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                       hidden_size=cfg["hidden"], mlp_ratio=4.0, num_heads=cfg["heads"], depth=cfg["depth"],
                       depth_single_blocks=cfg["single"], axes_dim=cfg["axes"], theta=10000, patch_size=2,
                       qkv_bias=True, guidance_embed=True, txt_ids_dims=[])
    model_config = comfy.supported_models.Flux(unet_config)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=device)
    model.diffusion_model.to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.normal_(0, 0.02)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device,
                                               offload_device=comfy.model_management.unet_offload_device())
    return patcher, device, dtype


def preset_arguments(description: str, parser: argparse.ArgumentParser | None = None, default: str = "cpu-small"):
    """Parse --preset (default `default`) / --repeats (plus whatever `parser` already declares); returns
    (args, preset config, repeats: --repeats or the preset's)."""
    parser = parser or argparse.ArgumentParser(description=description,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=default)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    cfg = dict(PRESETS[args.preset])
    return args, cfg, args.repeats or cfg["repeats"]


def dreamo_options(package, hidden: int, device):
    """DreamO's embedding wrapper with a random DreamOConditionEmbedding of width `hidden` on `device`.

    Returns (transformer_options carrying the wrapper, the pack's model.dreamo_conditioning and
    nodes.dreamo_patch modules)."""
    import comfy.patcher_extension

    dreamo_conditioning = importlib.import_module(f"{package.__name__}.model.dreamo_conditioning")
    dreamo_patch = importlib.import_module(f"{package.__name__}.nodes.dreamo_patch")
    embedding = dreamo_conditioning.DreamOConditionEmbedding(hidden).to(device)
    options = {"wrappers": {comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL: {
        dreamo_patch.DREAMO_WRAPPER_KEY: [dreamo_patch.DreamOEmbeddingWrapper(embedding)]}}}
    return options, dreamo_conditioning, dreamo_patch


def build_dreamo_flux(package, cfg: dict):
    """A random FLUX (build_random_flux) with DreamO's embedding wrapper, for the forward-pass benchmarks.

    Returns (diffusion model, device, dtype, transformer_options carrying the wrapper, the pack's
    model.dreamo_conditioning and nodes.dreamo_patch modules)."""
    patcher, device, dtype = build_random_flux(cfg)
    options, dreamo_conditioning, dreamo_patch = dreamo_options(package, cfg["hidden"], device)
    return patcher.model.diffusion_model, device, dtype, options, dreamo_conditioning, dreamo_patch


def syncd_guiders(package, patcher, cfg: dict) -> dict:
    """Core's DualCFGGuider and SynCD's NormalizedGuidanceGuider on `patcher`, as {class name: guider},
    both with the same three random conditionings (prompt + one reference latent of cfg["ref"] px,
    neutral prompt + the reference, neutral prompt alone) and matching scales (text 2.0, image 1.5)."""
    import torch
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG

    guidance = importlib.import_module(f"{package.__name__}.nodes.normalized_guidance")
    scales = importlib.import_module(f"{package.__name__}.model.guidance")
    ref_latent = cfg["ref"] // 8
    reference = torch.randn(1, 16, ref_latent, ref_latent, generator=torch.Generator().manual_seed(0))

    def cond(text_seed: int, with_reference: bool):
        gen = torch.Generator().manual_seed(text_seed)
        extra = {"pooled_output": torch.randn(1, 768, generator=gen), "guidance": 3.5}
        if with_reference:
            extra.update({"reference_latents": [reference], "reference_latents_method": "uxo"})
        return [[torch.randn(1, cfg["text"], 4096, generator=gen), extra]]

    positive, image_only, negative = cond(1, True), cond(2, True), cond(2, False)
    dual = Guider_DualCFG(patcher)
    dual.set_conds(positive, image_only, negative)
    dual.set_cfg(2.0, 1.5, nested=False)  # cfg1 (text) on positive vs middle, cfg2 (image) on middle vs negative
    ours = guidance.NormalizedGuidanceGuider(patcher)
    ours.set_conds(positive, image_only, negative)
    ours.set_scales(scales.GuidanceScales(text=2.0, image_start=1.5, image_increase=1.0), normalize=True)
    return {"DualCFGGuider": dual, "NormalizedGuidanceGuider": ours}


def fit_token_cost(points) -> tuple[float, float]:
    """The token-count model t(S) = a S + b S^2 (linear layers ~ S, attention ~ S^2), least squares through
    (S tokens, seconds) points. Returns (a, b), both >= 0: where the free fit drives one below zero (a tiny
    model whose time is mostly fixed overhead) that one is 0 and the other is fitted alone."""
    s2 = sum(s ** 2 for s, _ in points)
    s3 = sum(s ** 3 for s, _ in points)
    s4 = sum(s ** 4 for s, _ in points)
    r1 = sum(s * t for s, t in points)
    r2 = sum(s * s * t for s, t in points)
    det = s2 * s4 - s3 * s3
    a, b = (r1 * s4 - r2 * s3) / det, (s2 * r2 - s3 * r1) / det
    if a < 0:
        return 0.0, r2 / s4
    if b < 0:
        return r1 / s2, 0.0
    return a, b
