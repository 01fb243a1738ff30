"""Pure PyTorch parts of refcustom: modules, math, masks and weight formats. No ComfyUI imports."""
