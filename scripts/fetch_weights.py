"""Download the real weights the shipped workflows name into a ComfyUI models folder.

Needs internet and `huggingface_hub` (ComfyUI's venv has it). FLUX.1-dev is gated: accept its
licence on the hub and `huggingface-cli login` (or set HF_TOKEN) first. Not run by the tests.

    ~/ComfyUI/.venv/bin/python scripts/fetch_weights.py --models ~/ComfyUI/models [--v1] [--comfyui-layout]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

# (repo, file in repo, folder under models/, name there)
BASE = [
    ("black-forest-labs/FLUX.1-dev", "flux1-dev.safetensors", "diffusion_models", "flux1-dev.safetensors"),
    ("black-forest-labs/FLUX.1-dev", "ae.safetensors", "vae", "ae.safetensors"),
    ("comfyanonymous/flux_text_encoders", "t5xxl_fp16.safetensors", "text_encoders", "t5xxl_fp16.safetensors"),
    ("comfyanonymous/flux_text_encoders", "clip_l.safetensors", "text_encoders", "clip_l.safetensors"),
    ("alimama-creative/FLUX.1-Turbo-Alpha", "diffusion_pytorch_model.safetensors", "loras", "flux-turbo.safetensors"),
]
DREAMO_V11 = ["dreamo.safetensors", "dreamo_cfg_distill.safetensors",
              "v1.1/dreamo_sft_lora.safetensors", "v1.1/dreamo_dpo_lora.safetensors"]
DREAMO_V1 = ["dreamo_quality_lora_pos.safetensors", "dreamo_quality_lora_neg.safetensors"]
DREAMO_COMFYUI = ["embedding.safetensors", "comfyui/dreamo_comfyui.safetensors",
                  "comfyui/dreamo_cfg_distill_comfyui.safetensors"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="ComfyUI's models folder")
    parser.add_argument("--v1", action="store_true", help="also the v1 quality LoRAs (pos/neg)")
    parser.add_argument("--comfyui-layout", action="store_true", help="also embedding.safetensors and the comfyui/ files")
    parser.add_argument("--skip-base", action="store_true", help="only DreamO's files (FLUX already present)")
    args = parser.parse_args()

    from huggingface_hub import hf_hub_download

    wanted = [] if args.skip_base else list(BASE)
    files = DREAMO_V11 + (DREAMO_V1 if args.v1 else []) + (DREAMO_COMFYUI if args.comfyui_layout else [])
    wanted += [("ByteDance/DreamO", f, "dreamo", f) for f in files]
    for repo, filename, folder, name in wanted:
        target = args.models / folder / name
        if target.exists():
            print(f"have {target}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        cached = hf_hub_download(repo, filename)
        shutil.copyfile(cached, target)
        print(f"fetched {repo}/{filename} -> {target}")


if __name__ == "__main__":
    main()
