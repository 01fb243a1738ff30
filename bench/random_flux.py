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


def preset_arguments(description: str, parser: argparse.ArgumentParser | None = None):
    """Parse --preset / --repeats (plus whatever `parser` already declares); returns (args, preset config,
    repeats: --repeats or the preset's)."""
    parser = parser or argparse.ArgumentParser(description=description,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    cfg = dict(PRESETS[args.preset])
    return args, cfg, args.repeats or cfg["repeats"]


def build_dreamo_flux(package, cfg: dict):
    """A random FLUX (build_random_flux) with DreamO's embedding wrapper, for the forward-pass benchmarks.

    Returns (diffusion model, device, dtype, transformer_options carrying the wrapper, the pack's
    model.dreamo_conditioning and nodes.dreamo_patch modules)."""
    import comfy.patcher_extension

    dreamo_conditioning = importlib.import_module(f"{package.__name__}.model.dreamo_conditioning")
    dreamo_patch = importlib.import_module(f"{package.__name__}.nodes.dreamo_patch")
    patcher, device, dtype = build_random_flux(cfg)
    embedding = dreamo_conditioning.DreamOConditionEmbedding(cfg["hidden"]).to(device)
    options = {"wrappers": {comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL: {
        dreamo_patch.DREAMO_WRAPPER_KEY: [dreamo_patch.DreamOEmbeddingWrapper(embedding)]}}}
    return patcher.model.diffusion_model, device, dtype, options, dreamo_conditioning, dreamo_patch
