"""Shared by the in-process tests: run the Load DreamO node with every optional LoRA off unless named."""

from refcustom.nodes.dreamo_loader import DreamOLoader

LORA_SLOTS = ("cfg_distill", "turbo", "sft", "dpo", "quality_pos", "quality_neg")


def load_dreamo(model, **overrides):
    """(patched MODEL, DreamOWeights) from `dreamo.safetensors` at strength 1, plus `overrides`."""
    args = {"dreamo_file": "dreamo.safetensors", "embedding_file": "(inside dreamo_file)", "dreamo_strength": 1.0}
    for slot in LORA_SLOTS:
        args[f"{slot}_lora"], args[f"{slot}_strength"] = "none", 0.0
    args.update(overrides)
    return DreamOLoader.execute(model, **args).args
