"""SynCD's Masked Shared Attention (MSA) for joint text-image attention, without an (L x L) mask.

SynCD ("Generating Multi-Image Synthetic Data for Text-to-Image Customization", section 3.2, Eqn. 1;
rules restored in shared/notes/syncd-aligngen.md): the N images of a batch are denoised together.
Image i's *image* queries attend to image i's own text and image tokens and to the *foreground
image tokens* of every other image j != i; never to another image's text or background. Image i's
*text* queries attend only to image i's own tokens. A row always sees its own tokens, so no row is
ever masked everywhere (no NaN).

`SharedAttentionPlan` works out, once per forward pass, which keys each image may see; every block then
gathers them in one indexing op and runs ordinary attention (in the ComfyUI patch: the kernel ComfyUI is
configured with), one call per borrowing image plus one for all text queries: memory grows with the
foreground size, not with (N L)^2, and no block syncs with the host. `masked_shared_attention` is one
plan used once.
`dense_shared_attention` is the paper's literal definition (one sequence of N L tokens, -inf bias
outside the allowed set); it exists as the test reference and the benchmark's baseline.

Token order inside one image follows FLUX's joint attention: `text_tokens` text tokens, then image
tokens in raster order. Tensors are [B, H, L, D] (batch, heads, tokens, head dim).
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia
import numpy as np
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


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The default attention of `SharedAttentionPlan.attend`: PyTorch's SDPA on [B, H, L, D]."""
    return F.scaled_dot_product_attention(q, k, v)


@dataclass(frozen=True)
class SharedAttentionPlan:
    """Which keys every image's queries see, worked out once per forward pass and used by every block.

    Image queries of a borrower see its own L tokens plus the lent image tokens of every other image:
    their rows in the group's keys are the index pair (key_batch, key_token), all borrowers
    concatenated (`lengths` keys each), so a block gathers them in one indexing op with no host sync.
    Non-borrowers (`loners`, the references of reference mode) attend to their own tokens only.
    """

    text_tokens: int
    borrowers: tuple[int, ...]
    lengths: tuple[int, ...]
    key_batch: torch.Tensor  # long [sum(lengths)], on the model's device
    key_token: torch.Tensor
    loners: torch.Tensor  # long [B - len(borrowers)]

    @classmethod
    def build(cls, foreground: torch.Tensor, text_tokens: int, length: int, borrowers=None,
              device: torch.device | str = "cpu") -> SharedAttentionPlan:
        """foreground: bool [B, N] (token t of image j is lent when True; N <= length - text_tokens, the noise
        tokens; tokens after them are never lent). borrowers: bool [B] (default all). The indices are worked
        out on the host in NumPy (one copy of the foreground there, the pass's only sync) and moved to
        `device` in one copy each."""
        lent = foreground.detach().to("cpu", torch.bool).numpy()
        batch = lent.shape[0]
        borrows = np.ones(batch, dtype=bool) if borrowers is None else np.asarray(
            borrowers.cpu() if isinstance(borrowers, torch.Tensor) else borrowers, dtype=bool)
        lender, token = np.nonzero(lent)
        key_batch, key_token, lengths = [], [], []
        for i in np.flatnonzero(borrows):
            others = lender != i
            key_batch += [np.full(length, i), lender[others]]
            key_token += [np.arange(length), token[others] + text_tokens]
            lengths.append(length + int(others.sum()))

        def on_device(parts):
            return torch.from_numpy(np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)).to(device)

        return cls(text_tokens=text_tokens, borrowers=tuple(int(i) for i in np.flatnonzero(borrows)),
                   lengths=tuple(lengths), key_batch=on_device(key_batch), key_token=on_device(key_token),
                   loners=on_device([np.flatnonzero(~borrows)]))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention=sdpa) -> torch.Tensor:
        """MSA of one group [B, H, L, D] through `attention(q, k, v) -> [b, H, Lq, D]`, which may get fewer
        queries than keys: ComfyUI's configured kernel (sage, flash, xformers, PyTorch) in the patch."""
        text = self.text_tokens
        out = torch.empty_like(q)
        if text:  # text queries see their own image's tokens only: one call for the whole group
            out[:, :, :text] = attention(q[:, :, :text], k, v)
        if self.borrowers:
            # [H, K, D]: every borrower's keys in one gather, then a view per borrower.
            keys = k.transpose(0, 1)[:, self.key_batch, self.key_token]
            values = v.transpose(0, 1)[:, self.key_batch, self.key_token]
            for i, own_keys, own_values in zip(self.borrowers, keys.split(self.lengths, dim=1),
                                               values.split(self.lengths, dim=1), strict=True):
                out[i:i + 1, :, text:] = attention(q[i:i + 1, :, text:], own_keys.unsqueeze(0), own_values.unsqueeze(0))
        if self.loners.numel():
            out[self.loners, :, text:] = attention(q[self.loners, :, text:], k[self.loners], v[self.loners])
        return out


def masked_shared_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_tokens: int, foreground: torch.Tensor,
    borrowers: torch.Tensor | None = None, attention=sdpa,
) -> torch.Tensor:
    """Gathered MSA. foreground: bool [B, image tokens], True where image j lends its token.
    borrowers: bool [B], whose image queries look at the others' foreground (default all); a
    non-borrower (a reference image in reference mode) attends to its own tokens only.
    One call = one plan; the ComfyUI patch keeps its plan for the whole forward pass."""
    check_inputs(q, k, v, text_tokens, foreground)
    plan = SharedAttentionPlan.build(foreground, text_tokens, q.shape[2], borrowers, device=q.device)
    return plan.attend(q, k, v, attention)


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


def otsu_thresholds(values: torch.Tensor, bins: int = 10) -> torch.Tensor:
    """Otsu's threshold of each row of [B, N] over a `bins`-bin histogram between the row's min and max
    (SynCD uses 10 bins): the upper edge of the bin that maximises the between-class variance, [B, 1].
    On the values' device with no host sync (no histc, whose range must be Python numbers). A constant
    row gets its value: nothing lies above it."""
    values = values.float()
    low, high = values.amin(dim=1, keepdim=True), values.amax(dim=1, keepdim=True)
    if bins == 1:
        return high
    span = high - low
    # histc's rule: bin floor((v - low) * bins / span), the maximum in the last bin.
    index = ((values - low) * bins / span.clamp_min(torch.finfo(torch.float32).tiny)).floor().clamp_(0, bins - 1)
    hist = torch.zeros(values.shape[0], bins, device=values.device).scatter_add_(1, index.long(),
                                                                                 torch.ones_like(values))
    edges = low + span * torch.linspace(0, 1, bins + 1, device=values.device)
    centers = (edges[:, :-1] + edges[:, 1:]) / 2
    weight_below = torch.cumsum(hist, 1)
    weight_above = hist.sum(1, keepdim=True) - weight_below
    mass_below = torch.cumsum(hist * centers, 1)
    mean_below = mass_below / weight_below.clamp_min(1e-12)
    mean_above = (mass_below[:, -1:] - mass_below) / weight_above.clamp_min(1e-12)
    between = weight_below * weight_above * (mean_below - mean_above) ** 2
    best = torch.argmax(between[:, :-1], dim=1, keepdim=True)  # the first maximum, as a Python loop finds
    return torch.where(span > 0, edges[:, 1:].gather(1, best), high)


def foreground_from_attention(
    attention: torch.Tensor, grid: tuple[int, int], bins: int = 10, dilation: int = 3
) -> torch.Tensor:
    """Per-image attention maps [B, h*w] (e.g. image tokens' attention to the object's words) ->
    bool foreground [B, h*w]: Otsu threshold per image, then a `dilation` square dilation. Batched, on the
    maps' device, no host sync."""
    above = (attention.float() > otsu_thresholds(attention, bins)).float().reshape(-1, 1, *grid)
    if dilation > 1:
        kernel = torch.ones(dilation, dilation, device=attention.device)
        above = kornia.morphology.dilation(above, kernel)
    return (above > 0.5).reshape(attention.shape[0], -1)


def word_attention_maps(image_queries: torch.Tensor, text_keys: torch.Tensor, word_tokens: torch.Tensor) -> torch.Tensor:
    """How much each image token attends to the subject's words: [B, H, N, D] queries, [B, H, T, D] text keys,
    long [W] word positions -> float32 [B, N], the softmax over the text keys (a cross-attention map, as
    in SynCD's UNet) averaged over heads and words. All heads and images in one matmul in the model's
    dtype; the softmax's normaliser is summed in float32 and only the word columns are taken out of it."""
    logits = image_queries @ text_keys.transpose(-1, -2) * image_queries.shape[-1] ** -0.5  # [B, H, N, T]
    peak = logits.amax(dim=-1, keepdim=True)
    normaliser = (logits - peak).exp().sum(dim=-1, keepdim=True, dtype=torch.float32)
    words = logits.index_select(-1, word_tokens.to(logits.device))
    return ((words.float() - peak.float()).exp() / normaliser).mean(dim=(1, 3))

