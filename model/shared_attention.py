"""SynCD's Masked Shared Attention (MSA) for joint text-image attention, without an (L x L) mask.

SynCD ("Generating Multi-Image Synthetic Data for Text-to-Image Customization", section 3.2, Eqn. 1;
rules restored in shared/notes/syncd-aligngen.md): the N images of a batch are denoised together.
Image i's *image* queries attend to image i's own text and image tokens and to the *foreground
image tokens* of every other image j != i; never to another image's text or background. Image i's
*text* queries attend only to image i's own tokens. A row always sees its own tokens, so no row is
ever masked everywhere (no NaN).

`masked_shared_attention` gathers, per image, the keys and values it may see and runs ordinary
scaled-dot-product attention: memory grows with the foreground size, not with (N L)^2.
`dense_shared_attention` is the paper's literal definition (one sequence of N L tokens, -inf bias
outside the allowed set); it exists as the test reference and the benchmark's baseline.

Token order inside one image follows FLUX's joint attention: `text_tokens` text tokens, then image
tokens in raster order. Tensors are [B, H, L, D] (batch, heads, tokens, head dim).
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_tokens: int, foreground: torch.Tensor):
    if not (q.shape == k.shape == v.shape) or q.ndim != 4:
        raise ValueError(f"q, k, v must share a [B, H, L, D] shape, got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    image_tokens = q.shape[2] - text_tokens
    if foreground.shape != (q.shape[0], image_tokens):
        raise ValueError(
            f"foreground must be [B={q.shape[0]}, image tokens={image_tokens}], got {list(foreground.shape)}"
        )


def masked_shared_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_tokens: int, foreground: torch.Tensor,
    borrowers: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gathered MSA. foreground: bool [B, image tokens], True where image j lends its token.
    borrowers: bool [B], whose image queries look at the others' foreground (default all); a
    non-borrower (a reference image in reference mode) attends to its own tokens only."""
    check_inputs(q, k, v, text_tokens, foreground)
    batch = q.shape[0]
    borrowers = torch.ones(batch, dtype=torch.bool) if borrowers is None else borrowers.cpu().bool()
    foreground = foreground.to(device=q.device, dtype=torch.bool)
    image_k, image_v = k[:, :, text_tokens:], v[:, :, text_tokens:]
    shared_k = [image_k[j][:, foreground[j]] for j in range(batch)]  # [H, F_j, D]
    shared_v = [image_v[j][:, foreground[j]] for j in range(batch)]
    out = torch.empty_like(q)
    for i in range(batch):
        others = [j for j in range(batch) if j != i] if borrowers[i] else []
        keys = torch.cat([k[i]] + [shared_k[j] for j in others], dim=1)
        values = torch.cat([v[i]] + [shared_v[j] for j in others], dim=1)
        # Image queries see own tokens + the others' foreground; text queries see own tokens only.
        out[i, :, text_tokens:] = F.scaled_dot_product_attention(q[i, :, text_tokens:], keys, values)
        if text_tokens:
            out[i, :, :text_tokens] = F.scaled_dot_product_attention(q[i, :, :text_tokens], k[i], v[i])
    return out


def shared_attention_bias(text_tokens: int, foreground: torch.Tensor, dtype=torch.float32,
                          borrowers: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's bias over one sequence of B*L tokens: 0 where allowed, -inf elsewhere. [B L, B L]."""
    batch, image_tokens = foreground.shape
    borrowers = torch.ones(batch, dtype=torch.bool) if borrowers is None else borrowers.cpu().bool()
    length = text_tokens + image_tokens
    owner = torch.arange(batch).repeat_interleave(length)
    is_image = torch.cat([torch.zeros(text_tokens, dtype=torch.bool), torch.ones(image_tokens, dtype=torch.bool)])
    is_image = is_image.repeat(batch)
    shared = torch.cat([torch.cat([torch.zeros(text_tokens, dtype=torch.bool), fg.cpu().bool()]) for fg in foreground])
    same_image = owner[:, None] == owner[None, :]
    borrows = borrowers.repeat_interleave(length)
    allowed = same_image | ((is_image & borrows)[:, None] & shared[None, :])
    bias = torch.zeros(batch * length, batch * length, dtype=dtype)
    return bias.masked_fill(~allowed, float("-inf"))


def dense_shared_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_tokens: int, foreground: torch.Tensor,
    borrowers: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSA by its definition: all B images as one sequence with a dense [B L, B L] bias."""
    check_inputs(q, k, v, text_tokens, foreground)
    batch, heads, length, dim = q.shape

    def flat(t):  # [B, H, L, D] -> [1, H, B L, D]
        return t.permute(1, 0, 2, 3).reshape(1, heads, batch * length, dim)

    bias = shared_attention_bias(text_tokens, foreground, dtype=q.dtype, borrowers=borrowers).to(q.device)
    out = F.scaled_dot_product_attention(flat(q), flat(k), flat(v), attn_mask=bias)
    return out.reshape(heads, batch, length, dim).permute(1, 0, 2, 3)


def foreground_tokens(mask: torch.Tensor, grid: tuple[int, int], dilation: int = 9) -> torch.Tensor:
    """Pixel masks [B, H, W] in [0, 1] -> bool token masks [B, h*w] on a (h, w) token grid.

    Area-downsampled to the grid, any coverage counts (> 0), then dilated by a `dilation` x `dilation`
    square (SynCD uses 9 for rigid objects; 1 disables dilation).
    """
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise ValueError(f"MASK must be [B, H, W], got {list(mask.shape)}")
    if dilation < 1 or dilation % 2 == 0:
        raise ValueError(f"dilation must be an odd kernel size >= 1, got {dilation}")
    tokens = F.interpolate(mask.float().unsqueeze(1), size=grid, mode="area") > 0
    if dilation > 1:
        kernel = torch.ones(dilation, dilation, device=mask.device)
        tokens = kornia.morphology.dilation(tokens.float(), kernel) > 0.5
    return tokens.reshape(mask.shape[0], -1)


def otsu_threshold(values: torch.Tensor, bins: int = 10) -> torch.Tensor:
    """Otsu's threshold of a 1-D tensor over a `bins`-bin histogram (SynCD uses 10 bins).

    Returns the upper edge of the bin that maximises between-class variance; values above it are
    foreground. A constant input returns its value (nothing above it).
    """
    values = values.flatten().float()
    low, high = values.min(), values.max()
    if float(high - low) <= 0:
        return high
    hist = torch.histc(values, bins=bins, min=float(low), max=float(high))
    edges = torch.linspace(float(low), float(high), bins + 1, device=values.device)
    centers = (edges[:-1] + edges[1:]) / 2
    weight_below = torch.cumsum(hist, 0)
    weight_above = hist.sum() - weight_below
    mass_below = torch.cumsum(hist * centers, 0)
    mean_below = mass_below / weight_below.clamp_min(1e-12)
    mean_above = (mass_below[-1] - mass_below) / weight_above.clamp_min(1e-12)
    between = weight_below * weight_above * (mean_below - mean_above) ** 2
    return edges[1:][int(torch.argmax(between[:-1]))] if bins > 1 else high


def foreground_from_attention(
    attention: torch.Tensor, grid: tuple[int, int], bins: int = 10, dilation: int = 3
) -> torch.Tensor:
    """Per-image attention maps [B, h*w] (e.g. image tokens' attention to the object's words) ->
    bool foreground [B, h*w]: Otsu threshold per image, then a `dilation` square dilation."""
    masks = []
    for a in attention:
        masks.append((a > otsu_threshold(a, bins)).float().reshape(grid))
    stacked = torch.stack(masks)
    if dilation > 1:
        kernel = torch.ones(dilation, dilation, device=stacked.device)
        stacked = kornia.morphology.dilation(stacked.unsqueeze(1), kernel).squeeze(1)
    return (stacked > 0.5).reshape(attention.shape[0], -1)


def word_attention_map(image_queries: torch.Tensor, text_keys: torch.Tensor, word_tokens: list[int]) -> torch.Tensor:
    """How much each image token attends to the subject's words: [H, N, D] queries, [H, T, D] text keys ->
    [N], the softmax over text keys (a cross-attention map, as in SynCD's UNet) averaged over heads and
    words. One head at a time, so memory stays at N x T."""
    total = image_queries.new_zeros(image_queries.shape[1], dtype=torch.float32)
    scale = image_queries.shape[-1] ** -0.5
    for head in range(image_queries.shape[0]):
        logits = (image_queries[head].float() @ text_keys[head].float().T) * scale
        total += logits.softmax(dim=-1)[:, word_tokens].mean(dim=-1)
    return total / image_queries.shape[0]
