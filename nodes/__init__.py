"""Thin ComfyUI V3 nodes: graph types in, `model/` calls and ModelPatcher patches out. No math here."""

from __future__ import annotations


def node_list() -> list:
    from .aligngen_conditioning import AlignGenConditioningNode
    from .aligngen_loader import ALIGNGEN_FOLDER, AlignGenLoader
    from .dreamo_loader import DREAMO_FOLDER, DreamOLoader
    from .dreamo_reference import DreamOReferenceNode
    from .dreamo_text import DreamOTextEncode
    from .model_folders import register_safetensors_folder
    from .normalized_guidance import GuidanceBranchesNode, NormalizedGuidanceGuiderNode
    from .shared_attention import MaskedSharedAttentionNode, SharedAttentionReferenceNode
    from .true_cfg_guider import TrueCFGGuiderNode

    register_safetensors_folder(DREAMO_FOLDER)
    register_safetensors_folder(ALIGNGEN_FOLDER)
    return [DreamOLoader, DreamOReferenceNode, DreamOTextEncode, TrueCFGGuiderNode,
            NormalizedGuidanceGuiderNode, GuidanceBranchesNode, MaskedSharedAttentionNode,
            SharedAttentionReferenceNode, AlignGenLoader, AlignGenConditioningNode]
