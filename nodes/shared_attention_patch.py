"""Masked Shared Attention (SynCD) as a MODEL patch: the images of one batch share foreground.

Per forward pass a DIFFUSION_MODEL wrapper reads the batch layout (`cond_or_uncond`: chunks of B
images per conditioning) and the step (`sigmas` within `sample_sigmas`) and installs, for that pass
only, two things through public extension points:

- a post-input patch that moves image j of each shared chunk (its text and image ids) down by
  j * (rows of one image), SynCD's tall-canvas layout: the keys image i borrows from image j keep
  positions distinct from image i's own, while every relative position inside image j, and so its
  own attention, is unchanged;
- an attention override (chained with any earlier one) that runs `model.shared_attention`'s gathered
  kernel inside each shared chunk and the original attention elsewhere.

The first `full_shared_steps` steps share every image token; later steps share the masked foreground.
A pass with nothing to share installs nothing, so it is exactly the unpatched model.

Reference mode (Shared Attention Reference) adds an OUTER_SAMPLE wrapper: when sampling starts, and
before the diffusion model loads, it VAE-encodes the reference images at the sampled latent's size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.reference_preprocess import resize_area
from ..model.shared_attention import (
    SharedAttentionPlan,
    foreground_from_attention,
    foreground_tokens,
    masked_shared_attention,
    word_attention_maps,
)

SHARED_ATTENTION_KEY = "refcustom_shared_attention"


class ReferenceImages:
    """Reference mode's images [R, H, W, 3], VAE-encoded at the size of the latent being sampled.

    That size is known only when sampling starts (the node never sees the latent), so the pixels are
    kept and, per latent size, area-resized to latent size x the VAE factor and encoded then: the VAE
    sees the generation's size, never the upload's (a 6000x4000 photo encoded at full size took the
    server +17.8 GB). The latents of the last size are kept: every step, and repeated samples of that
    size, reuse them.
    """

    def __init__(self, images: torch.Tensor, vae, process_latent_in):
        self.images = images
        self.vae = vae
        self.process_latent_in = process_latent_in
        self._cached: tuple[tuple[int, int], torch.Tensor] | None = None

    @property
    def count(self) -> int:
        return self.images.shape[0]

    def latents(self, size) -> torch.Tensor:
        """[R, C, h, w] latents in the model's space (CPU) for a latent of spatial size (h, w)."""
        size = (int(size[0]), int(size[1]))
        if self._cached is None or self._cached[0] != size:
            factor = self.vae.spacial_compression_encode()
            pixels = resize_area(self.images, (size[0] * factor, size[1] * factor))
            # No progress ticks: this runs inside the sampler node, whose bar counts sampling steps only.
            latents = self.process_latent_in(self.vae.encode(pixels).float()).cpu()
            self._cached = (size, latents)
        return self._cached[1]


class ReferenceEncodeWrapper:
    """OUTER_SAMPLE wrapper: encodes the references at the sampled latent's size before the sampler
    loads the diffusion model, since loading the VAE inside a model forward could evict that model."""

    def __init__(self, references: ReferenceImages):
        self.references = references

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, noise, latent_image, *args, **kwargs):
        if latent_image.ndim == 4:  # [B, C, h, w]; other layouts are encoded at the first forward instead
            self.references.latents(latent_image.shape[-2:])
        return executor(noise, latent_image, *args, **kwargs)


@dataclass(frozen=True)
class SharedAttentionSettings:
    """masks: pixel masks [B, H, W] (1 = object), one per image of the batch; or None, and then
    `word_tokens` (T5 positions of the subject's words in the prompt) drive a per-step estimate."""

    masks: torch.Tensor | None
    dilation: int = 9
    full_shared_steps: int = 1
    full_shared_above_sigma: float = 0.0  # also share everything while sigma >= this (0 = off)
    patch_negative: bool = False
    word_tokens: tuple[int, ...] = ()
    kernel: object = field(default=masked_shared_attention, compare=False)
    # Reference mode: the reference images (encoded per latent size), their pixel masks [R, H, W]
    # (None = all), the model's sampling object (to noise them to each step's sigma) and the seed of that noise.
    references: ReferenceImages | None = None
    reference_masks: torch.Tensor | None = None
    model_sampling: object = field(default=None, compare=False)
    noise_seed: int = 0

    def __post_init__(self):
        if self.masks is None and not self.word_tokens and self.references is None:
            raise ValueError("Masked Shared Attention needs a MASK per image, or the subject's words to estimate one.")

    def full_phase(self, transformer_options: dict) -> bool:
        """Whether this step shares every token: the first `full_shared_steps`, or sigma in the full range."""
        step = step_index(transformer_options)
        if step is not None and step < self.full_shared_steps:
            return True
        sigmas = transformer_options.get("sigmas")
        return self.full_shared_above_sigma > 0 and sigmas is not None and float(sigmas.max()) >= self.full_shared_above_sigma

    def check_count(self, batch: int) -> None:
        if self.masks is not None and self.masks.shape[0] != batch:
            raise ValueError(
                f"Masked Shared Attention got {self.masks.shape[0]} masks for a batch of {batch} images; give one "
                "MASK per image (batch the masks in the same order as the latents)."
            )

    def foreground(self, batch: int, grid: tuple[int, int]) -> torch.Tensor:
        self.check_count(batch)
        tokens = foreground_tokens(self.masks, grid, self.dilation)  # on the host, as the masks are
        empty = np.flatnonzero(~tokens.numpy().any(axis=1)).tolist()
        if empty:
            logging.warning("refcustom: Masked Shared Attention: the masks of images %s are empty; they share nothing", empty)
        return tokens


def step_index(transformer_options: dict) -> int | None:
    sigmas, schedule = transformer_options.get("sigmas"), transformer_options.get("sample_sigmas")
    if sigmas is None or schedule is None:
        return None
    sigma = float(sigmas.max())
    return int(torch.argmin((schedule.to(torch.float32).cpu() - sigma).abs()))


class CanvasOffsetPatch:
    """Post-input patch: sample s moves `multipliers[s]` image-heights down (text ids too)."""

    def __init__(self, multipliers: tuple[int, ...]):
        self.multipliers = multipliers

    @classmethod
    def for_chunks(cls, images_per_chunk: int, shared_chunks: tuple[bool, ...]) -> CanvasOffsetPatch:
        """Image j of each shared chunk j heights down; unshared chunks stay."""
        return cls(tuple(j if shared else 0 for shared in shared_chunks for j in range(images_per_chunk)))

    def __call__(self, kwargs: dict) -> dict:
        img_ids, txt_ids = kwargs["img_ids"].clone(), kwargs["txt_ids"].clone()
        rows = img_ids[..., 1].amax() + 1
        for sample, multiplier in enumerate(self.multipliers):
            if multiplier:
                img_ids[sample, :, 1] += multiplier * rows
                txt_ids[sample, :, 1] += multiplier * rows
        return {**kwargs, "img_ids": img_ids, "txt_ids": txt_ids}


class SharedAttentionOverride:
    """Attention override: masked shared attention inside shared chunks, the original attention elsewhere.

    One exists per forward pass, so what every block needs is worked out once and kept here: the plan of
    which keys each image sees (`SharedAttentionPlan`, on the model's device). Shared chunks call the
    attention ComfyUI hands the override (the configured kernel, through any earlier override), with
    fewer queries than keys where an image borrows.

    With `foreground` None the pass estimates it (SynCD's deformable-object path): the double blocks run
    unshared while each adds its image-to-word attention map; the single blocks then share the Otsu
    foreground of the average.
    """

    def __init__(self, foreground: torch.Tensor | None, text_tokens: int, shared_chunks: tuple[bool, ...], kernel,
                 previous=None, batch: int = 0, grid: tuple[int, int] = (0, 0), word_tokens: tuple[int, ...] = (),
                 double_blocks: int = 0):
        self.foreground = foreground  # [B, noise tokens] or None (estimate)
        self.text_tokens = text_tokens
        self.shared_chunks = shared_chunks
        self.kernel = kernel
        self.previous = previous
        self.batch = foreground.shape[0] if foreground is not None else batch
        self.grid = grid
        self.word_tokens = tuple(word_tokens)
        self.word_index = None  # the word positions on the model's device, made at the first double block
        self.word_maps = None
        self.maps_added = 0
        self.plan = None  # made at the first shared block of the pass
        # ComfyUI names the block kind in transformer_options["block_type"] from v0.4; older hosts do not, and
        # there the first `double_blocks` attention calls of a pass are the double blocks (FLUX's order).
        self.double_blocks = double_blocks
        self.calls = 0

    def block_type(self, transformer_options: dict | None) -> str:
        named = (transformer_options or {}).get("block_type")
        if named is not None:
            return named
        return "double" if self.calls <= self.double_blocks else "single"

    def _add_word_maps(self, q, k):
        if self.word_index is None:
            self.word_index = torch.tensor(self.word_tokens, dtype=torch.long).to(q.device)
        text, noise = self.text_tokens, self.grid[0] * self.grid[1]
        chunk = self.shared_chunks.index(True)
        part = slice(chunk * self.batch, (chunk + 1) * self.batch)
        maps = word_attention_maps(q[part, :, text:text + noise], k[part, :, :text], self.word_index)
        self.word_maps = maps if self.word_maps is None else self.word_maps + maps
        self.maps_added += 1

    def _original(self, func, *args, **kwargs):
        return self.previous(func, *args, **kwargs) if self.previous is not None else func(*args, **kwargs)

    def _group_attention(self, func, heads, args, kwargs):
        """attention(q, k, v) for one group: ComfyUI's configured kernel, through any earlier override."""
        def attention(q, k, v):
            return self._original(func, q, k, v, heads, *args, mask=None, skip_reshape=True, skip_output_reshape=True,
                                  **kwargs)
        return attention

    def _shared(self, q, k, v, attention, borrowers: torch.Tensor | None = None) -> torch.Tensor:
        """MSA of one group: `self.foreground` lends (noise tokens only: tokens FLUX appends after them, DreamO or
        Kontext references, never lend), `borrowers` borrow (default all)."""
        if self.kernel is not masked_shared_attention:  # another kernel (the dense definition: tests, benchmarks)
            padding = q.shape[2] - self.text_tokens - self.foreground.shape[1]
            foreground = torch.nn.functional.pad(self.foreground, (0, padding), value=False).to(q.device)
            borrowing = () if borrowers is None else (borrowers,)  # batch-mode kernels take no borrowers
            return self.kernel(q, k, v, self.text_tokens, foreground, *borrowing)
        if self.plan is None:
            self.plan = SharedAttentionPlan.build(self.foreground, self.text_tokens, q.shape[2], borrowers,
                                                  device=q.device)
        return self.plan.attend(q, k, v, attention)

    def __call__(self, func, q, k, v, heads, *args, mask=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
        if not skip_reshape:  # FLUX always passes [B, H, L, D]; anything else is not ours to share
            return self._original(func, q, k, v, heads, *args, mask=mask, skip_reshape=skip_reshape,
                                  skip_output_reshape=skip_output_reshape, **kwargs)
        if mask is not None:
            raise ValueError(
                "Masked Shared Attention cannot combine with an attention mask on the same model (e.g. Redux with "
                "strength_type 'attn_bias'); use strength_type 'multiply' or remove one of the two."
            )
        self.calls += 1
        if self.foreground is None:
            block_type = self.block_type(kwargs.get("transformer_options"))
            if block_type == "double" or self.word_maps is None:
                self._add_word_maps(q, k)
                return self._original(func, q, k, v, heads, *args, mask=mask, skip_reshape=skip_reshape,
                                      skip_output_reshape=skip_output_reshape, **kwargs)
            self.foreground = foreground_from_attention(self.word_maps / self.maps_added, self.grid)
        attention = self._group_attention(func, heads, args, kwargs)
        batch = self.batch
        out = torch.empty_like(q)
        for chunk, shared in enumerate(self.shared_chunks):
            part = slice(chunk * batch, (chunk + 1) * batch)
            out[part] = self._shared(q[part], k[part], v[part], attention) if shared else attention(q[part], k[part],
                                                                                                    v[part])
        if skip_output_reshape:
            return out
        b, h, length, d = out.shape
        return out.transpose(1, 2).reshape(b, length, h * d)


class SharedAttentionWrapper:
    """DIFFUSION_MODEL wrapper that plans each pass and installs the offset patch and the override."""

    def __init__(self, settings: SharedAttentionSettings):
        self.settings = settings

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                 transformer_options={}, **kwargs):
        def plain():
            return executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)

        cond_or_uncond = transformer_options.get("cond_or_uncond") or [0]
        if x.shape[0] % len(cond_or_uncond):
            return plain()
        if self.settings.references is not None:
            return self.reference_pass(executor, x, timestep, context, y, guidance, ref_latents, control,
                                       transformer_options, cond_or_uncond, plain, **kwargs)
        batch = x.shape[0] // len(cond_or_uncond)
        self.settings.check_count(batch)
        shared_chunks = tuple(c == 0 or self.settings.patch_negative for c in cond_or_uncond)
        if batch < 2 or not any(shared_chunks):
            return plain()
        patch_size = executor.class_obj.patch_size
        grid = ((x.shape[-2] + patch_size - 1) // patch_size, (x.shape[-1] + patch_size - 1) // patch_size)
        if self.settings.full_phase(transformer_options):
            foreground = torch.ones(batch, grid[0] * grid[1], dtype=torch.bool)
        elif self.settings.masks is not None:
            foreground = self.settings.foreground(batch, grid)
        else:
            foreground = None  # estimated inside the pass from the subject words' attention
            if max(self.settings.word_tokens) >= context.shape[1]:
                raise ValueError(
                    f"the subject words sit at T5 positions up to {max(self.settings.word_tokens)} but this prompt has "
                    f"{context.shape[1]} tokens: the prompt given to Masked Shared Attention is not the one sampled."
                )
        if foreground is not None and not foreground.numpy().any():  # host tensors: no device sync
            return plain()

        patches = dict(transformer_options.get("patches", {}))
        patches["post_input"] = [*patches.get("post_input", []), CanvasOffsetPatch.for_chunks(batch, shared_chunks)]
        override = SharedAttentionOverride(foreground, context.shape[1], shared_chunks, self.settings.kernel,
                                           previous=transformer_options.get("optimized_attention_override"),
                                           batch=batch, grid=grid, word_tokens=self.settings.word_tokens,
                                           double_blocks=len(executor.class_obj.double_blocks))
        options = {**transformer_options, "patches": patches, "optimized_attention_override": override}
        return executor(x, timestep, context, y, guidance, ref_latents, control, options, **kwargs)

    def reference_pass(self, executor, x, timestep, context, y, guidance, ref_latents, control, transformer_options,
                       cond_or_uncond, plain, **kwargs):
        """Reference mode: the references, noised to this step's sigma with fresh (seeded) noise, run as extra
        batch rows; the targets of shared chunks borrow the references' foreground; nothing else changes."""
        settings = self.settings
        batch = x.shape[0] // len(cond_or_uncond)
        shared_chunks = tuple(c == 0 or settings.patch_negative for c in cond_or_uncond)
        if not any(shared_chunks):
            return plain()
        if control is not None:
            raise ValueError("Masked Shared Attention's reference mode does not combine with a ControlNet yet.")
        sigmas = transformer_options.get("sigmas")
        if sigmas is None:
            raise ValueError("reference mode needs ComfyUI's sampler (the current sigma was not passed).")
        patch_size = executor.class_obj.patch_size
        grid = ((x.shape[-2] + patch_size - 1) // patch_size, (x.shape[-1] + patch_size - 1) // patch_size)
        count = settings.references.count
        if settings.full_phase(transformer_options) or settings.reference_masks is None:
            lent = torch.ones(count, grid[0] * grid[1], dtype=torch.bool)
        else:
            lent = foreground_tokens(settings.reference_masks, grid, settings.dilation)
        if not lent.numpy().any():
            return plain()

        sigma = float(sigmas.max())
        # Encoded at this latent's size by ReferenceEncodeWrapper before sampling; cached since.
        references = settings.references.latents(x.shape[-2:]).to(device=x.device, dtype=torch.float32)
        generator = torch.Generator().manual_seed(settings.noise_seed * 1_000_003 + round(sigma * 1e6))
        noise = torch.randn(references.shape, generator=generator).to(references)
        sigma_rows = torch.full((count,), sigma, device=x.device)
        sampling = settings.model_sampling
        noised = sampling.calculate_input(sigma_rows, sampling.noise_scaling(sigma_rows, noise, references))

        total = x.shape[0]
        # The reference rows borrow the positive prompt's conditioning (SynCD runs them with the prompt).
        # ComfyUI batches the branches in no fixed order ([uncond, cond] is common), so find the positive
        # chunk; a pass without it (the branches split for memory) has only shared negatives here, and
        # their references use the first of them.
        source_chunk = cond_or_uncond.index(0) if 0 in cond_or_uncond else shared_chunks.index(True)
        source = source_chunk * batch

        def extend(value):
            if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == total:
                return torch.cat([value, value[source:source + 1].expand(count, *value.shape[1:])])
            if isinstance(value, list):
                return [extend(v) for v in value]
            return value

        target_rows = [row for chunk, shared in enumerate(shared_chunks) if shared
                       for row in range(chunk * batch, (chunk + 1) * batch)]
        rows = target_rows + list(range(total, total + count))
        multipliers = tuple([0] * total + [r + 1 for r in range(count)])
        patches = dict(transformer_options.get("patches", {}))
        patches["post_input"] = [*patches.get("post_input", []), CanvasOffsetPatch(multipliers)]
        override = ReferenceAttentionOverride(rows, len(target_rows), lent, context.shape[1], settings.kernel,
                                              previous=transformer_options.get("optimized_attention_override"))
        options = {**transformer_options, "patches": patches, "optimized_attention_override": override}
        out = executor(torch.cat([x, noised.to(x.dtype)]), extend(timestep), extend(context), extend(y),
                       extend(guidance), extend(ref_latents), control, options,
                       **{key: extend(value) for key, value in kwargs.items()})
        return out[:total]


class ReferenceAttentionOverride(SharedAttentionOverride):
    """Rows `rows` (targets first, then references) form one group: targets borrow the references' lent
    tokens, references attend to themselves; every other row runs the original attention. The group's
    plan and row indices are made at the first block of the pass, on the model's device."""

    def __init__(self, rows: list[int], targets: int, lent: torch.Tensor, text_tokens: int, kernel, previous=None):
        # Over the group: targets lend nothing, references lend their mask; only targets borrow.
        foreground = torch.cat([torch.zeros(targets, lent.shape[1], dtype=torch.bool), lent.cpu().bool()])
        super().__init__(foreground, text_tokens, (), kernel, previous=previous)
        self.rows = rows
        self.borrowers = torch.tensor([True] * targets + [False] * (len(rows) - targets))
        self.indices = None  # (group rows, other rows) as device tensors

    def __call__(self, func, q, k, v, heads, *args, mask=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
        if not skip_reshape:
            return self._original(func, q, k, v, heads, *args, mask=mask, skip_reshape=skip_reshape,
                                  skip_output_reshape=skip_output_reshape, **kwargs)
        if mask is not None:
            raise ValueError("Masked Shared Attention cannot combine with an attention mask on the same model.")
        if self.indices is None:
            others = [r for r in range(q.shape[0]) if r not in set(self.rows)]
            self.indices = (torch.tensor(self.rows, dtype=torch.long).to(q.device),
                            torch.tensor(others, dtype=torch.long).to(q.device) if others else None)
        group, rest = self.indices
        attention = self._group_attention(func, heads, args, kwargs)
        out = torch.empty_like(q)
        out[group] = self._shared(q[group], k[group], v[group], attention, self.borrowers)
        if rest is not None:
            out[rest] = attention(q[rest], k[rest], v[rest])
        if skip_output_reshape:
            return out
        b, h, length, d = out.shape
        return out.transpose(1, 2).reshape(b, length, h * d)
