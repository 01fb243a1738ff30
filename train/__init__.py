"""refcustom's LoRA training sidecar: DreamO and AlignGen on diffusers' FLUX, with peft and accelerate.

`python -m refcustom.train train --config my.yaml` (or the `refcustom-train` script) trains what the
nodes load; `python -m refcustom.train print-config` writes every option with its documentation.
Nothing here imports ComfyUI.
"""
