"""The diffusers twin of a ComfyUI FLUX: FluxTransformer2DModel carrying the patcher's current weights.

ComfyUI's own key map (`comfy.utils.flux_to_diffusers`) says which fused BFL tensor (and which
slice of it) each diffusers tensor is, so the twin is built without any conversion of ours.
"""

import comfy.model_management
import comfy.utils


def patched_state_dict(model_patcher):
    comfy.model_management.load_models_gpu([model_patcher], force_full_load=True)
    return {k: v.detach().clone().float() for k, v in model_patcher.model.diffusion_model.state_dict().items()}


def to_diffusers(model_patcher):
    """diffusers FluxTransformer2DModel with the patcher's current (patched) weights."""
    from diffusers import FluxTransformer2DModel

    cfg = model_patcher.model.model_config.unet_config
    sd = patched_state_dict(model_patcher)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=cfg["in_channels"] * 4, num_layers=cfg["depth"],
        num_single_layers=cfg["depth_single_blocks"], attention_head_dim=cfg["hidden_size"] // cfg["num_heads"],
        num_attention_heads=cfg["num_heads"], joint_attention_dim=cfg["context_in_dim"],
        pooled_projection_dim=cfg["vec_in_dim"], guidance_embeds=True, axes_dims_rope=tuple(cfg["axes_dim"]),
    )
    key_map = comfy.utils.flux_to_diffusers(cfg)
    converted = {}
    for key in model.state_dict():
        source = key_map[key]
        if isinstance(source, str):
            converted[key] = sd[source]
        elif len(source) == 3:  # (key, None, transform)
            converted[key] = source[2](sd[source[0]])
        else:  # (fused key, (dim, offset, size))
            name, (dim, offset, size) = source
            converted[key] = sd[name].narrow(dim, offset, size)
    model.load_state_dict(converted)
    return model.eval()



def diffusers_flux_folder(folder, model_patcher):
    """A tiny diffusers FLUX.1-dev folder (train/tiny_model.py) whose transformer is the patcher's model:
    the trainer then starts from exactly ComfyUI's weights."""
    from refcustom.train.tiny_model import write_tiny_flux

    folder = write_tiny_flux(folder)
    to_diffusers(model_patcher).save_pretrained(folder / "transformer")
    return folder
