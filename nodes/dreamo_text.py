"""Text encoding with DreamO's trained `[ref#1]`..`[ref#9]`, `[res]` T5 placeholder embeddings.

The prompt is tokenized with the CLIP's own tokenizer piece by piece; each placeholder becomes one
T5 token whose input embedding is DreamO's learned vector, spliced in through ComfyUI's standard
embedding mechanism (a tensor in the token list, as textual-inversion embeddings are). CLIP-L sees
the raw prompt, as in the official pipeline, where only T5 knows the new tokens.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..model.placeholders import split_prompt
from .dreamo_loader import DreamOWeightsType

T5_KEY = "t5xxl"


def _t5_width(clip) -> int | None:
    t5 = getattr(clip.cond_stage_model, T5_KEY, None)
    transformer = getattr(t5, "transformer", None)
    if transformer is None or not hasattr(transformer, "get_input_embeddings"):
        return None
    return transformer.get_input_embeddings().weight.shape[-1]


def _strip_end(batch: list, end_token: int, pad_token: int) -> list:
    """Tokens of one piece without the end token and padding the tokenizer appended."""
    tokens = list(batch)
    while tokens and not hasattr(tokens[-1][0], "shape") and tokens[-1][0] == pad_token:
        tokens.pop()
    if tokens and not hasattr(tokens[-1][0], "shape") and tokens[-1][0] == end_token:
        tokens.pop()
    return tokens


def tokenize_with_placeholders(clip, text: str, placeholders) -> dict:
    """clip.tokenize(text), with each DreamO placeholder a single learned T5 token."""
    parts = split_prompt(text)
    if not any(isinstance(p, int) for p in parts):
        return clip.tokenize(text)
    tokenizer = getattr(clip.tokenizer, T5_KEY, None)
    if tokenizer is None:
        raise TypeError(
            "DreamO placeholders need FLUX's T5 text encoder (DualCLIPLoader with t5xxl + clip_l, type flux); "
            "this CLIP has no T5."
        )
    if placeholders is None:
        raise ValueError(
            "the prompt uses [ref#k] placeholders but the loaded DreamO file has no T5 placeholder table "
            "(dreamo_t5_embedding). Load dreamo.safetensors or embedding.safetensors in Load DreamO."
        )
    width = _t5_width(clip)
    if width is not None and width != placeholders.shape[-1]:
        raise ValueError(
            f"DreamO's placeholder embeddings are {placeholders.shape[-1]} wide but this T5 is {width} wide; use the "
            "T5-XXL text encoder DreamO was trained with."
        )

    tokens = clip.tokenize(text)
    t5_tokens = []
    for part in parts:
        if isinstance(part, int):
            t5_tokens.append((placeholders[part].float(), 1.0))
        elif part.strip():
            piece = clip.tokenize(part)[T5_KEY]
            for batch in piece:
                t5_tokens.extend(_strip_end(batch, tokenizer.end_token, tokenizer.pad_token))
    t5_tokens.append((tokenizer.end_token, 1.0))
    min_length = tokenizer.min_length or 0
    t5_tokens.extend([(tokenizer.pad_token, 1.0)] * max(0, min_length - len(t5_tokens)))
    tokens[T5_KEY] = [t5_tokens]
    return tokens


class DreamOTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RefCustom_DreamOTextEncode",
            display_name="DreamO Text Encode",
            category="refcustom/dreamo",
            description=(
                "CLIPTextEncode that understands DreamO's placeholders: write [ref#1] .. [ref#9] after the subject they "
                "name ('a woman from [ref#1] and a dog from [ref#2]'). Without placeholders it equals CLIPTextEncode."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="FLUX text encoders (t5xxl + clip_l)."),
                DreamOWeightsType.Input("dreamo", tooltip="The DREAMO output of Load DreamO (its T5 placeholder table)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="The prompt; [ref#k] refers to the DreamO reference with index k."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, dreamo, text) -> io.NodeOutput:
        if clip is None:
            raise RuntimeError("the CLIP input is empty: the checkpoint has no text encoder; load one with DualCLIPLoader.")
        tokens = tokenize_with_placeholders(clip, text, dreamo.tables.placeholders)
        return io.NodeOutput(clip.encode_from_tokens_scheduled(tokens))
