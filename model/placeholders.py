"""DreamO prompt placeholders `[ref#1]`..`[ref#9]` and `[res]` (DreamO `_prepare_t5`).

DreamO adds ten T5 tokens whose input embeddings are the last ten rows of `dreamo_t5_embedding`:
`[ref#k]` is row k-1 and `[res]` is row 9. `split_prompt` cuts a prompt into plain text and
placeholder rows so a text encoder can splice the learned vectors in.
"""

from __future__ import annotations

import re

from .dreamo_conditioning import MAX_REFERENCES

RES_ROW = 9
# Anything that looks like an attempted placeholder, so a typo is an error and not silent text.
_CANDIDATE = re.compile(r"\[\s*(ref\s*#[^\]]*|res)\s*\]", re.IGNORECASE)
_VALID_REF = re.compile(r"^ref#([1-9])$")


def split_prompt(text: str) -> list[str | int]:
    """Split `text` into strings and placeholder rows (ints 0..9), in order.

    Raises ValueError for malformed placeholders such as `[ref#]`, `[ref#0]` or `[ref#10]`.
    """
    parts: list[str | int] = []
    cursor = 0
    for match in _CANDIDATE.finditer(text):
        body = match.group(1)
        if body.lower() == "res":
            row = RES_ROW
        else:
            valid = _VALID_REF.match(body)
            if valid is None:
                raise ValueError(
                    f"placeholder {match.group(0)!r} is not valid: write [ref#1] .. [ref#{MAX_REFERENCES}] "
                    "(the number of the reference it names) or [res]."
                )
            row = int(valid.group(1)) - 1
        if match.start() > cursor:
            parts.append(text[cursor : match.start()])
        parts.append(row)
        cursor = match.end()
    if cursor < len(text):
        parts.append(text[cursor:])
    return parts


def has_placeholders(text: str) -> bool:
    return any(isinstance(p, int) for p in split_prompt(text))


_WELL_FORMED = re.compile(r"\s*\[(?:ref#[1-9]|res)\]", re.IGNORECASE)


def strip_placeholders(text: str) -> str:
    """The prompt without its placeholders (and the space before each): DreamO's plain-text variant."""
    return re.sub(r"\s{2,}", " ", _WELL_FORMED.sub("", text)).strip()
