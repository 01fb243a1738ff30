"""Thin ComfyUI V3 nodes: graph types in, `model/` calls and ModelPatcher patches out. No math here."""

from __future__ import annotations


def node_list() -> list:
    from .aligngen_conditioning import AlignGenConditioningNode
    from .aligngen_loader import AlignGenLoader, register_aligngen_folder
    from .dreamo_loader import DreamOLoader, register_model_folders
    from .dreamo_reference import DreamOReferenceNode
    from .dreamo_text import DreamOTextEncode
    from .normalized_guidance import GuidanceBranchesNode, NormalizedGuidanceGuiderNode
    from .shared_attention import MaskedSharedAttentionNode, SharedAttentionReferenceNode
    from .true_cfg_guider import TrueCFGGuiderNode

    register_model_folders()
    register_aligngen_folder()
    return [DreamOLoader, DreamOReferenceNode, DreamOTextEncode, TrueCFGGuiderNode,
            NormalizedGuidanceGuiderNode, GuidanceBranchesNode, MaskedSharedAttentionNode,
            SharedAttentionReferenceNode, AlignGenLoader, AlignGenConditioningNode]
