"""Text encoding the way DreamO's pipeline does it: placeholders as T5 tokens, T5 padded to 512.

The whole prompt is tokenized once with FLUX's T5 tokenizer plus DreamO's ten added tokens
(`model/placeholders.py`), which is what the official pipeline does; ComfyUI's own tokenizer code
still parses `(text:1.2)` weights and `embedding:` names around it. Each placeholder id is then
swapped for DreamO's learned vector through ComfyUI's standard embedding mechanism (a tensor in the
token list, as textual-inversion embeddings are), which equals overwriting T5's input-embedding rows
as the official `_prepare_t5` does. CLIP-L sees the raw prompt, as there: only T5 knows the tokens.

T5 length: the official pipeline pads (and cuts) T5 to `max_sequence_length` 512; ComfyUI's
CLIPTextEncode pads FLUX's T5 to 256. FLUX attends to the padding tokens, so the length changes the
image; `t5_length` picks it.
"""

from __future__ import annotations

import copy
import logging
import os

import comfy.conds
from comfy_api.latest import io

from ..model.placeholders import placeholder_row, placeholder_tokenizer, reference_indices_named, split_prompt
from .dreamo_loader import DreamOWeightsType
from .dreamo_patch import PLACEHOLDER_COND_KEY  # checked against the references by the DreamO wrapper

T5_KEY = "t5xxl"
OFFICIAL_T5_LENGTH = 512  # DreamOPipeline.__call__ max_sequence_length


def _t5_width(clip) -> int | None:
    t5 = getattr(clip.cond_stage_model, T5_KEY, None)
    transformer = getattr(t5, "transformer", None)
    if transformer is None or not hasattr(transformer, "get_input_embeddings"):
        return None
    return transformer.get_input_embeddings().weight.shape[-1]


class _OfficialT5Ids:
    """Stands in for the Hugging Face tokenizer inside a copy of ComfyUI's T5 SDTokenizer.

    SDTokenizer only calls `tokenizer(text)["input_ids"]` (ids ending in </s>) while tokenizing.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> dict:
        return {"input_ids": self.tokenizer.encode(text).ids}


def _tokenizer_json(t5_tokenizer) -> str:
    folder = getattr(getattr(t5_tokenizer, "tokenizer", None), "name_or_path", "") or ""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        raise RuntimeError(
            f"cannot find the T5 tokenizer file {path!r} that DreamO's placeholder tokens are added to. This CLIP "
            "carries a custom T5 tokenizer; load FLUX's text encoders with DualCLIPLoader (type flux)."
        )
    return path


def official_t5_tokens(clip, text: str, placeholders, t5_length: int) -> list:
    """One T5 token list [(id or vector, weight), ...] of exactly `t5_length`, as DreamO's pipeline builds it."""
    t5_tokenizer = getattr(clip.tokenizer, T5_KEY, None)
    if t5_tokenizer is None:
        raise TypeError(
            "DreamO Text Encode needs FLUX's T5 text encoder (DualCLIPLoader with t5xxl + clip_l, type flux); "
            "this CLIP has no T5."
        )
    rows_named = [p for p in split_prompt(text) if isinstance(p, int)]  # validates the placeholders
    if rows_named and placeholders is None:
        raise ValueError(
            "the prompt uses [ref#k] placeholders but the loaded DreamO file has no T5 placeholder table "
            "(dreamo_t5_embedding). Load dreamo.safetensors or embedding.safetensors in Load DreamO."
        )
    width = _t5_width(clip)
    if rows_named and width is not None and width != placeholders.shape[-1]:
        raise ValueError(
            f"DreamO's placeholder embeddings are {placeholders.shape[-1]} wide but this T5 is {width} wide; use the "
            "T5-XXL text encoder DreamO was trained with."
        )

    tokenizer = placeholder_tokenizer(_tokenizer_json(t5_tokenizer))
    official = copy.copy(t5_tokenizer)  # ComfyUI's weight and embedding parsing, the official ids underneath
    official.tokenizer = _OfficialT5Ids(tokenizer)
    (batch,) = official.tokenize_with_weights(
        text, False, tokenizer_options={f"{T5_KEY}_min_length": None, f"{T5_KEY}_min_padding": None}
    )
    content = batch[:-1]  # without the end token
    if len(content) > t5_length - 1:
        logging.warning(
            "DreamO Text Encode: the prompt is %d T5 tokens; cut to %d as DreamO's pipeline does (raise t5_length "
            "or shorten the prompt to keep the rest).", len(content) + 1, t5_length)
        content = content[: t5_length - 1]
    tokens = []
    for token, weight in content:
        row = None if hasattr(token, "shape") else placeholder_row(tokenizer, token)
        tokens.append((placeholders[row].float(), weight) if row is not None else (token, weight))
    tokens.append((t5_tokenizer.end_token, 1.0))
    tokens.extend([(t5_tokenizer.pad_token, 1.0)] * (t5_length - len(tokens)))
    return tokens


def tokenize_like_dreamo(clip, text: str, placeholders, t5_length: int = OFFICIAL_T5_LENGTH) -> dict:
    """clip.tokenize(text) with the T5 part built as DreamO's pipeline builds it."""
    tokens = clip.tokenize(text)
    tokens[T5_KEY] = [official_t5_tokens(clip, text, placeholders, t5_length)]
    return tokens


def with_named_references(conditioning: list, text: str) -> list:
    """Mark each cond with the [ref#k] indices its prompt names, for the sampling-time check."""
    named = reference_indices_named(text)
    if not named:
        return conditioning
    out = []
    for embedding, cond in conditioning:
        model_conds = {**cond.get("model_conds", {}), PLACEHOLDER_COND_KEY: comfy.conds.CONDConstant(named)}
        out.append([embedding, {**cond, "model_conds": model_conds}])
    return out


class DreamOTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RefCustom_DreamOTextEncode",
            display_name="DreamO Text Encode",
            category="refcustom/dreamo",
            description=(
                "CLIPTextEncode as DreamO's pipeline encodes: [ref#1] .. [ref#9] and [res] are DreamO's trained T5 "
                "tokens (write them after the subject they name: 'a woman from [ref#1] and a dog from [ref#2]'), and "
                "T5 is padded to t5_length (official 512). Placeholders are lower case; [ref#k] needs a DreamO "
                "reference with index k on this conditioning."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="FLUX text encoders (t5xxl + clip_l)."),
                DreamOWeightsType.Input("dreamo", tooltip="The DREAMO output of Load DreamO (its T5 placeholder table)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="The prompt; [ref#k] refers to the DreamO reference with index k."),
                io.Int.Input("t5_length", default=OFFICIAL_T5_LENGTH, min=64, max=4096, step=64, optional=True,
                             tooltip="T5 tokens FLUX sees: the prompt is padded to this length and cut at it. 512 is "
                                     "DreamO's official value; 256 is what CLIPTextEncode gives FLUX (a bit faster "
                                     "per step, different images)."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, dreamo, text, t5_length=OFFICIAL_T5_LENGTH) -> io.NodeOutput:
        if clip is None:
            raise RuntimeError("the CLIP input is empty: the checkpoint has no text encoder; load one with DualCLIPLoader.")
        tokens = tokenize_like_dreamo(clip, text, dreamo.tables.placeholders, t5_length)
        return io.NodeOutput(with_named_references(clip.encode_from_tokens_scheduled(tokens), text))
