"""DreamO prompt placeholders `[ref#1]`..`[ref#9]` and `[res]` (DreamO `_prepare_t5`).

DreamO adds ten T5 tokens whose input embeddings are the last ten rows of `dreamo_t5_embedding`:
`[ref#k]` is row k-1 and `[res]` is row 9. The official pipeline adds them to FLUX's T5 tokenizer
(`tokenizer_2.add_tokens([...], special_tokens=False)`, transformers 4.45.2) and tokenizes the whole
prompt with it. Where an added token cuts the text, the `tokenizers` library treats each piece on its
own: a space before a placeholder becomes a lone `▁` token and a word glued after one gets no `▁`.
Tokenizing piece by piece with the plain tokenizer gets both wrong, so `placeholder_tokenizer`
rebuilds the official tokenizer from the same `tokenizer.json` with the `tokenizers` library itself.
transformers 5 rebuilds T5 tokenizers its own way and splits around added tokens differently; going
to `tokenizers` directly keeps the official ids whatever transformers the host has.

The rule for what counts as a placeholder is the official one, made strict: exactly `[ref#1]` ..
`[ref#9]` and `[res]`, lower case. Anything that looks like an attempt (`[REF#1]`, `[Res]`,
`[ref#0]`, `[ref #1]`) would silently be plain text to the official tokenizer, so it is an error
that names the fix.
"""

from __future__ import annotations

import functools
import re

from .dreamo_conditioning import MAX_REFERENCES

PLACEHOLDER_TOKENS = tuple(f"[ref#{k}]" for k in range(1, MAX_REFERENCES + 1)) + ("[res]",)
RES_ROW = len(PLACEHOLDER_TOKENS) - 1
# Anything that looks like an attempted placeholder, so a typo is an error and not silent text.
_CANDIDATE = re.compile(r"\[\s*(ref\s*#[^\]]*|res)\s*\]", re.IGNORECASE)


def split_prompt(text: str) -> list[str | int]:
    """Split `text` into strings and placeholder rows (ints 0..9), in order.

    Raises ValueError for anything that looks like a placeholder but is not exactly one of
    `[ref#1]`..`[ref#9]`, `[res]`: `[ref#]`, `[ref#0]`, `[ref#10]`, `[REF#1]`, `[RES]`.
    """
    parts: list[str | int] = []
    cursor = 0
    for match in _CANDIDATE.finditer(text):
        written = match.group(0)
        if written not in PLACEHOLDER_TOKENS:
            lowered = re.sub(r"\s+", "", written.lower())
            hint = f" (placeholders are lower case: write {lowered})" if lowered in PLACEHOLDER_TOKENS else ""
            raise ValueError(
                f"placeholder {written!r} is not valid{hint}: write [ref#1] .. [ref#{MAX_REFERENCES}] "
                "(the number of the reference it names) or [res], exactly, in lower case."
            )
        if match.start() > cursor:
            parts.append(text[cursor : match.start()])
        parts.append(PLACEHOLDER_TOKENS.index(written))
        cursor = match.end()
    if cursor < len(text):
        parts.append(text[cursor:])
    return parts


def reference_indices_named(text: str) -> frozenset[int]:
    """The reference indices k the prompt names with `[ref#k]` (`[res]` names none)."""
    return frozenset(p + 1 for p in split_prompt(text) if isinstance(p, int) and p != RES_ROW)


def has_placeholders(text: str) -> bool:
    return any(isinstance(p, int) for p in split_prompt(text))


_WELL_FORMED = re.compile(r"\s*\[(?:ref#[1-9]|res)\]")


def strip_placeholders(text: str) -> str:
    """The prompt without its placeholders (and the space before each): DreamO's plain-text variant."""
    return re.sub(r"\s{2,}", " ", _WELL_FORMED.sub("", text)).strip()


@functools.lru_cache(maxsize=4)
def placeholder_tokenizer(tokenizer_json: str):
    """FLUX's T5 tokenizer from its `tokenizer.json` with DreamO's ten tokens added, as the official one.

    The added tokens get the ids right after the base vocabulary (32100..32109 for T5-XXL), in
    `PLACEHOLDER_TOKENS` order; `placeholder_row` maps an id back to its table row.
    """
    from tokenizers import AddedToken, Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_json)
    base = tokenizer.get_vocab_size(with_added_tokens=True)
    # transformers' add_tokens(special_tokens=False) makes exactly these: normalized, no strip, not special.
    added = tokenizer.add_tokens([AddedToken(t, normalized=True, special=False) for t in PLACEHOLDER_TOKENS])
    if added != len(PLACEHOLDER_TOKENS) or tokenizer.token_to_id(PLACEHOLDER_TOKENS[0]) != base:
        raise ValueError(
            f"{tokenizer_json} already knows some of DreamO's placeholder tokens; use FLUX's stock T5 tokenizer."
        )
    return tokenizer


def placeholder_row(tokenizer, token_id: int) -> int | None:
    """The placeholder-table row of `token_id`, or None for an ordinary token."""
    first = tokenizer.token_to_id(PLACEHOLDER_TOKENS[0])
    row = token_id - first
    return row if 0 <= row < len(PLACEHOLDER_TOKENS) else None
