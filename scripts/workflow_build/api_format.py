"""API-format graphs: every widget present (defaults from /object_info filled in) and validated."""

from __future__ import annotations

from .graph import Graph, Node, Out
from .node_defs import NodeDef, combo_options, input_options, input_type, is_widget


def complete_inputs(node: Node, d: NodeDef) -> dict:
    """API inputs with every widget present (defaults filled in), validated against the definition."""
    known = {name for name, _, _ in d.ordered_inputs()}
    unknown = set(node.inputs) - known
    if unknown:
        raise ValueError(f"{node.class_type} (node {node.id}) has no input(s) {sorted(unknown)}")
    out = {}
    for name, spec, optional in d.ordered_inputs():
        if name in node.inputs:
            value = node.inputs[name]
        elif is_widget(spec) and "default" in input_options(spec):
            value = input_options(spec)["default"]
        elif optional:
            continue
        else:
            raise ValueError(f"{node.class_type} (node {node.id}) needs a value for {name}")
        if isinstance(value, Out):
            if is_widget(spec):
                raise ValueError(f"{node.class_type}.{name} is a widget; this generator does not link widgets")
        elif not is_widget(spec):
            raise ValueError(f"{node.class_type}.{name} is a {input_type(spec)} slot and needs a link")
        elif input_type(spec) == "COMBO":
            options = combo_options(spec)
            # File lists are empty when the server has no models; static lists must contain the value.
            if options and value not in options and name not in FILE_WIDGETS.get(node.class_type, ()):
                raise ValueError(f"{node.class_type}.{name} = {value!r} is not one of {options}")
        out[name] = value
    return out


# Combos listing files: their options depend on what is in models/ or input/, so values are not checked.
FILE_WIDGETS = {
    "UNETLoader": ("unet_name",),
    "DualCLIPLoader": ("clip_name1", "clip_name2"),
    "VAELoader": ("vae_name",),
    "LoadImage": ("image",),
    "RefCustom_DreamOLoader": ("dreamo_file", "embedding_file", "cfg_distill_lora", "turbo_lora", "sft_lora",
                               "dpo_lora", "quality_pos_lora", "quality_neg_lora"),
    "RefCustom_AlignGenLoader": ("aligngen_file",),
    "StyleModelLoader": ("style_model_name",),
    "CLIPVisionLoader": ("clip_name",),
}

# ----------------------------------------------------------------------------------------------
# API and UI formats
# ----------------------------------------------------------------------------------------------


def api_graph(g: Graph, defs: dict[str, NodeDef]) -> dict:
    out = {}
    for node in g.nodes:
        d = defs[node.class_type]
        inputs = {k: ([v.node, v.slot] if isinstance(v, Out) else v) for k, v in complete_inputs(node, d).items()}
        title = node.title or d.info.get("display_name") or node.class_type
        out[node.id] = {"class_type": node.class_type, "inputs": inputs, "_meta": {"title": title}}
    return out
