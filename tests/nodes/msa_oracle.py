"""A test oracle for SynCD's Masked Shared Attention (MSA) on ComfyUI's FLUX, written from the definition.

It imports nothing from refcustom: no wrapper, settings, kernel or mask helper of the pack. What it
computes comes from the SynCD paper (section 3.2, Eqn. 1 and Fig. 3; the rules the extraction lost are
restored in shared/notes/syncd-aligngen.md) and from the promises of the nodes' tooltips:

- Attention: the images of a shared group are one sequence. A query of image i may see a key of image
  j when j == i (its own text and image tokens), or when the query is one of image i's image tokens
  and the key is a foreground image token that image j lends. Text queries never look outside their
  own image; nobody sees another image's text or background. Everything else gets a -inf bias and the
  whole row goes through one softmax(q k^T / sqrt(d) + bias) v, in float64, by its literal formula.
- Positions (FLUX's RoPE): the images lie on one tall canvas, every id of an image (its text and image
  tokens) moved down by its canvas slot times the rows its ids span, so borrowed keys never share a
  position with the borrower's own, while every position inside one image stays relative to it.
- Token masks: each pixel mask is area-downsampled to the 16 px token grid (OpenCV INTER_AREA), any
  coverage counts (> 0), then dilated by a `dilation` x `dilation` square (cv2.dilate); 1 = none.
- Steps: the first `full_shared_steps` sampling steps lend every image token; the masks apply after.
- Branches: only the positive (cond) chunk shares unless `patch_negative`; an unshared image attends to
  its own tokens only (computed here by the same formula, not by ComfyUI's attention).
- Tokens FLUX appends after the noise tokens (DreamO references) never lend.
- Without masks (SynCD's deformable-object path, as the node's tooltip promises): per forward pass the
  double blocks run unshared while each records, for every positive image, the cross-attention map of
  its noise tokens on the subject's words (softmax over the text keys only, as SynCD's UNet
  cross-attention, averaged over heads and words); the mean over the double blocks is binarized by
  Otsu's method on a 10-bin histogram, dilated 3x3, and is what the single blocks lend.

The hooks are ComfyUI's public ones, installed on a clone: a post-input patch (canvas ids, and the
sequence sizes of the pass) and `transformer_options["optimized_attention_override"]` (the attention).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch


def token_mask(pixel_masks, grid: tuple[int, int], dilation: int = 1) -> torch.Tensor:
    """Pixel masks [B, H, W] (1 = object) -> bool [B, rows * cols] in FLUX's raster token order."""
    rows, cols = grid
    tokens = []
    for pixels in np.asarray(pixel_masks, dtype=np.float32):
        coverage = cv2.resize(pixels, (cols, rows), interpolation=cv2.INTER_AREA)  # dsize is (width, height)
        lent = (coverage > 0).astype(np.uint8)
        if dilation > 1:
            lent = cv2.dilate(lent, np.ones((dilation, dilation), np.uint8))
        tokens.append(lent.reshape(-1) > 0)
    return torch.from_numpy(np.stack(tokens))


def otsu_foreground(values: np.ndarray, bins: int = 10) -> np.ndarray:
    """Otsu's method on a `bins`-bin histogram over [min, max]: True above the split edge that maximises the
    between-class variance (bin centres as class values). A constant map has no foreground."""
    if values.max() <= values.min():
        return np.zeros(values.shape, dtype=bool)
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    best, split_edge = -1.0, edges[-1]
    for split in range(1, bins):  # classes: bins [0, split) and [split, bins)
        low, high = counts[:split].sum(), counts[split:].sum()
        if low == 0 or high == 0:
            continue
        mean_low = (counts[:split] * centres[:split]).sum() / low
        mean_high = (counts[split:] * centres[split:]).sum() / high
        between = low * high * (mean_low - mean_high) ** 2
        if between > best:
            best, split_edge = between, edges[split]
    return values > split_edge


def definition_attention(q, k, v, text_tokens: int, lends: torch.Tensor, borrows: list[bool]) -> torch.Tensor:
    """Eqn. 1 over one group of G images. q, k, v [G, H, L, D]; lends bool [G, L] (the tokens image j lends);
    borrows[i]: whether image i's image queries see the other images' lent tokens. Returns [G, H, L, D]."""
    group, heads, length, dim = q.shape
    allowed = torch.zeros(group * length, group * length, dtype=torch.bool)
    for i in range(group):
        for j in range(group):
            block = allowed[i * length:(i + 1) * length, j * length:(j + 1) * length]
            if i == j:
                block[:] = True  # own text and image tokens
            elif borrows[i]:
                block[text_tokens:] = lends[j].cpu()  # image queries of i see what j lends; text queries nothing
    bias = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, -math.inf).to(q.device)

    def one_sequence(t):  # [G, H, L, D] -> [H, G L, D]
        return t.to(torch.float64).permute(1, 0, 2, 3).reshape(heads, group * length, dim)

    scores = one_sequence(q) @ one_sequence(k).transpose(1, 2) / math.sqrt(dim) + bias
    out = scores.softmax(dim=-1) @ one_sequence(v)
    return out.reshape(heads, group, length, dim).permute(1, 0, 2, 3).to(q.dtype)


def step_of(transformer_options: dict) -> int:
    """Index of this forward's sigma in the sampling schedule (Euler evaluates step k at sample_sigmas[k])."""
    sigma = float(transformer_options["sigmas"].max())
    schedule = [float(s) for s in transformer_options["sample_sigmas"]]
    matches = [k for k, s in enumerate(schedule) if math.isclose(s, sigma, rel_tol=1e-6, abs_tol=1e-9)]
    if not matches:
        raise AssertionError(f"sigma {sigma} is not in the schedule {schedule}")
    return matches[0]


def t5_rows_of(clip, prompt: str, word: str) -> list[int]:
    """T5 rows of `word` inside the tokenized `prompt`, found with ComfyUI's own tokenizer."""
    def t5_ids(text):
        return [token for token, *_ in clip.tokenize(text)["t5xxl"][0]]

    prompt_ids = t5_ids(prompt)
    word_ids = [t for t in t5_ids(word) if t not in (0, 1)]  # T5 pad 0, end 1
    starts = [s for s in range(len(prompt_ids)) if prompt_ids[s:s + len(word_ids)] == word_ids]
    assert word_ids and starts, (word, word_ids, prompt_ids)
    return [s + n for s in starts for n in range(len(word_ids))]


class MaskedSharedAttentionOracle:
    """The batch mode: the images of each shared chunk (B images per conditioning) share with each other.

    grid: the noise tokens' (rows, cols); lent: bool [B, rows * cols] from `token_mask`, or None with
    `word_positions` (the subject's T5 rows: the estimate).
    """

    def __init__(self, grid: tuple[int, int], lent: torch.Tensor | None = None, full_shared_steps: int = 0,
                 patch_negative: bool = False, word_positions: list[int] | None = None):
        assert lent is not None or word_positions, "give token masks or the subject's word positions"
        assert lent is None or lent.shape[1] == grid[0] * grid[1]
        self.grid = grid
        self.noise_tokens = grid[0] * grid[1]
        self.lent = lent
        self.full_shared_steps = full_shared_steps
        self.patch_negative = patch_negative
        self.word_positions = word_positions
        self.text_tokens = self.image_tokens = None
        self.word_maps: list[torch.Tensor] = []

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model_options: keep one oracle per install
        return self

    def install(self, model):
        self.double_blocks = len(model.model.diffusion_model.double_blocks)
        patched = model.clone()
        patched.set_model_post_input_patch(self.canvas)
        patched.model_options["transformer_options"]["optimized_attention_override"] = self.attention
        return patched

    # canvas -----------------------------------------------------------------------------------------
    def canvas_slot(self, sample: int, batch: int) -> int:
        return sample  # relative offsets inside a chunk are what matter: image j is j - i slots from image i

    def canvas(self, kwargs: dict) -> dict:
        img_ids, txt_ids = kwargs["img_ids"].clone(), kwargs["txt_ids"].clone()
        self.text_tokens, self.image_tokens = kwargs["txt"].shape[1], kwargs["img"].shape[1]
        self.word_maps = []  # a new forward pass
        self.attention_calls = 0
        for sample in range(img_ids.shape[0]):
            span = img_ids[sample, :, 1].max() - img_ids[sample, :, 1].min() + 1  # rows this image's ids cover
            down = self.canvas_slot(sample, img_ids.shape[0]) * span
            img_ids[sample, :, 1] += down
            txt_ids[sample, :, 1] += down
        return {**kwargs, "img_ids": img_ids, "txt_ids": txt_ids}

    # attention --------------------------------------------------------------------------------------
    def attention(self, func, q, k, v, heads, *args, mask=None, skip_reshape=False, skip_output_reshape=False,
                  transformer_options=None, **kwargs):
        assert skip_reshape and mask is None, "FLUX's joint attention passes [B, H, L, D] and no mask here"
        assert q.shape[2] == self.text_tokens + self.image_tokens
        options = transformer_options
        self.attention_calls += 1
        out = self.pass_attention(q, k, v, options)
        if skip_output_reshape:
            return out
        b, h, length, d = out.shape
        return out.transpose(1, 2).reshape(b, length, h * d)

    def pass_attention(self, q, k, v, options):
        chunks = options["cond_or_uncond"]
        batch = q.shape[0] // len(chunks)
        full = step_of(options) < self.full_shared_steps
        out = torch.empty_like(q)
        for chunk, kind in enumerate(chunks):
            rows = slice(chunk * batch, (chunk + 1) * batch)
            shared = kind == 0 or self.patch_negative
            lent = self.lent_tokens(q[rows], k[rows], batch, full, options) if shared else None
            if lent is None:  # unshared: each image on its own
                lends = torch.zeros(batch, q.shape[2], dtype=torch.bool)
                out[rows] = definition_attention(q[rows], k[rows], v[rows], self.text_tokens, lends, [False] * batch)
                continue
            lends = torch.zeros(batch, q.shape[2], dtype=torch.bool)
            lends[:, self.text_tokens:self.text_tokens + lent.shape[1]] = lent  # appended tokens never lend
            out[rows] = definition_attention(q[rows], k[rows], v[rows], self.text_tokens, lends, [True] * batch)
        return out

    def kind_of_block(self, options) -> str:
        """FLUX runs its double blocks first, one attention call each; ComfyUI >= 0.4 also names the kind."""
        if "block_type" in options:
            return options["block_type"]
        return "double" if self.attention_calls <= self.double_blocks else "single"

    def lent_tokens(self, q, k, batch, full, options):
        """bool [batch, noise tokens] this chunk lends in this attention call, or None to run unshared."""
        if full:
            return torch.ones(batch, self.noise_tokens, dtype=torch.bool)
        if self.lent is not None:
            assert self.lent.shape[0] == batch
            return self.lent
        assert not self.patch_negative, "the oracle estimates masks for the positive chunk only"
        if self.kind_of_block(options) == "double":
            self.word_maps.append(self.word_map(q, k))
            return None
        maps = torch.stack(self.word_maps).mean(dim=0)  # [batch, noise tokens]
        return torch.stack([self.estimated_mask(m) for m in maps])

    def word_map(self, q, k) -> torch.Tensor:
        text, noise = self.text_tokens, self.noise_tokens
        image_queries = q[:, :, text:text + noise].to(torch.float64)
        text_keys = k[:, :, :text].to(torch.float64)
        probs = (image_queries @ text_keys.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(dim=-1)
        return probs[..., self.word_positions].mean(dim=(1, 3)).cpu()  # over heads and words: [batch, noise]

    def estimated_mask(self, word_map: torch.Tensor) -> torch.Tensor:
        rows, cols = self.grid
        lent = otsu_foreground(word_map.numpy()).reshape(rows, cols).astype(np.uint8)
        return torch.from_numpy(cv2.dilate(lent, np.ones((3, 3), np.uint8)).reshape(-1) > 0)


class SharedReferenceOracle(MaskedSharedAttentionOracle):
    """SynCD's reference mode (section 4.3): at every step the reference latents are noised to that step's
    sigma with fresh noise (FLUX's flow matching: x = sigma * noise + (1 - sigma) * latent) and run through
    the same model as extra rows with the positive prompt's conditioning. Each generated image of a shared
    chunk attends to its own tokens and to the references' lent tokens (other generated images lend
    nothing); each reference attends to itself. On the canvas every generated image is slot 0 and
    reference r is slot r + 1.

    The one thing taken from the pack is its reference noise stream (`noise_seed`), because the definition
    leaves the random numbers free: torch.randn from a Generator seeded with
    noise_seed * 1_000_003 + round(sigma * 1e6).
    """

    def __init__(self, grid, reference_latents: torch.Tensor, lent: torch.Tensor, full_shared_steps: int = 0,
                 patch_negative: bool = False, noise_seed: int = 0):
        super().__init__(grid, lent, full_shared_steps, patch_negative)
        self.references = reference_latents  # [R, C, h, w], in the model's latent space
        self.noise_seed = noise_seed
        self.total = None  # rows of the pass before the references are appended

    @classmethod
    def encode(cls, model, vae, images: torch.Tensor) -> torch.Tensor:
        """[R, H, W, 3] images -> latents in the model's space (ComfyUI's VAE.encode, process_latent_in)."""
        return model.model.process_latent_in(vae.encode(images[..., :3]).float()).cpu()

    def install(self, model):
        import comfy.patcher_extension

        patched = super().install(model)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "msa_oracle_references",
                                     self.with_references)
        return patched

    def with_references(self, executor, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                        transformer_options={}, **kwargs):
        assert tuple(x.shape[-2:]) == tuple(self.references.shape[-2:]), "encode the references at the latent's size"
        chunks = transformer_options["cond_or_uncond"]
        batch = x.shape[0] // len(chunks)
        assert 0 in chunks, "the oracle expects the positive in every pass"
        positive = chunks.index(0) * batch  # the first row of the positive chunk
        self.total, count = x.shape[0], self.references.shape[0]
        sigma = float(transformer_options["sigmas"].max())
        generator = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + round(sigma * 1e6))
        noise = torch.randn(self.references.shape, generator=generator)
        noised = (sigma * noise + (1.0 - sigma) * self.references).to(x)

        def with_reference_rows(value):
            if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == self.total:
                return torch.cat([value, value[positive:positive + 1].expand(count, *value.shape[1:])])
            if isinstance(value, list):
                return [with_reference_rows(item) for item in value]
            return value

        out = executor(torch.cat([x, noised]), with_reference_rows(timestep), with_reference_rows(context),
                       with_reference_rows(y), with_reference_rows(guidance), with_reference_rows(ref_latents),
                       control, transformer_options,
                       **{key: with_reference_rows(value) for key, value in kwargs.items()})
        return out[:self.total]

    def canvas_slot(self, sample: int, batch: int) -> int:
        return sample - self.total + 1 if sample >= self.total else 0

    def pass_attention(self, q, k, v, options):
        chunks = options["cond_or_uncond"]
        batch = self.total // len(chunks)
        count = q.shape[0] - self.total
        full = step_of(options) < self.full_shared_steps
        lent = torch.ones(count, self.noise_tokens, dtype=torch.bool) if full else self.lent
        shared = [row for chunk, kind in enumerate(chunks) if kind == 0 or self.patch_negative
                  for row in range(chunk * batch, (chunk + 1) * batch)]
        group = shared + list(range(self.total, self.total + count))
        lends = torch.zeros(len(group), q.shape[2], dtype=torch.bool)
        lends[len(shared):, self.text_tokens:self.text_tokens + self.noise_tokens] = lent
        out = torch.empty_like(q)
        out[group] = definition_attention(q[group], k[group], v[group], self.text_tokens, lends,
                                          [True] * len(shared) + [False] * count)
        for row in range(q.shape[0]):
            if row not in group:  # an unshared branch: each image on its own
                own = slice(row, row + 1)
                out[own] = definition_attention(q[own], k[own], v[own], self.text_tokens,
                                                torch.zeros(1, q.shape[2], dtype=torch.bool), [False])
        return out
