"""Loading FLUX.1-dev (and FLUX.1-Redux) from diffusers folders, and what the trainer does with them.

- `load_flux`: transformer, VAE, CLIP-L, T5 and their tokenizers, every part frozen.
- `PromptEncoder`: FLUX's two text encoders, with learned input embeddings spliced into T5. DreamO's
  placeholders `[ref#1]..[ref#9]`, `[res]` and AlignGen's `S*` are tokens added to the T5 tokenizer
  (as the official DreamO pipeline does); their input embeddings are rows of a trainable table, so
  the gradient reaches them through the frozen T5.
- `encode_latents` / `pack` / `unpack`: VAE latents with FLUX's shift and scale, as 2x2 patch tokens.
- `ReduxEncoder`: SigLIP + the Redux projector, giving the [n, T5 width] tokens AlignGen's DEM reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class FluxParts:
    transformer: torch.nn.Module
    vae: torch.nn.Module
    clip: torch.nn.Module
    t5: torch.nn.Module
    clip_tokenizer: object
    t5_tokenizer: object
    scheduler: object
    path: Path


def _check_folder(path: Path, parts: tuple[str, ...], what: str):
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder {path} does not exist")
    missing = [p for p in parts if not (path / p).exists()]
    if missing:
        raise ValueError(
            f"{path} is not a diffusers {what} folder: it lacks {missing}. Point model.pretrained at a full "
            "diffusers download (e.g. black-forest-labs/FLUX.1-dev), or use 'tiny'."
        )


def load_flux(path: str | Path, dtype: torch.dtype, device) -> FluxParts:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    path = Path(path)
    _check_folder(path, ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"), "FLUX")
    transformer = FluxTransformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
    if transformer.config.in_channels != 64 or not transformer.config.guidance_embeds:
        raise ValueError(
            f"{path}/transformer is not a FLUX.1-dev transformer (in_channels {transformer.config.in_channels}, "
            f"guidance_embeds {transformer.config.guidance_embeds}); DreamO and AlignGen train on FLUX.1-dev."
        )
    parts = FluxParts(
        transformer=transformer,
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype),
        clip=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype),
        t5=T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2", torch_dtype=dtype),
        clip_tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer"),
        t5_tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer_2"),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler"),
        path=path,
    )
    for module in (parts.transformer, parts.vae, parts.clip, parts.t5):
        module.requires_grad_(False).eval().to(device)
    return parts


class PromptEncoder:
    """FLUX prompt encoding with trainable input embeddings for added T5 tokens.

    `learned_tokens` are added to the T5 tokenizer (non-special, like DreamO's `_prepare_t5`); row i
    of the table passed to `encode` is the input embedding of `learned_tokens[i]`.
    """

    def __init__(self, parts: FluxParts, max_tokens: int, learned_tokens: list[str], cache=None):
        self.parts = parts
        self.cache = cache  # a TensorCache for encodings that involve no learned token
        self.max_tokens = max_tokens
        self.learned_tokens = list(learned_tokens)
        self.t5_tokenizer = parts.t5_tokenizer
        self.t5_tokenizer.add_tokens(self.learned_tokens)
        self.learned_ids = torch.tensor(self.t5_tokenizer.convert_tokens_to_ids(self.learned_tokens))

    @property
    def t5_width(self) -> int:
        return self.parts.t5.config.d_model

    def t5_ids(self, prompts: list[str]) -> torch.Tensor:
        return self.t5_tokenizer(
            prompts, padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt"
        ).input_ids

    def learned_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] long: which learned token each position is (-1 for ordinary tokens)."""
        rows = torch.full_like(ids, -1)
        for row, token_id in enumerate(self.learned_ids.tolist()):
            rows[ids == token_id] = row
        return rows

    def pooled(self, prompts: list[str]) -> torch.Tensor:
        """CLIP-L pooled output [B, P] (the official pipelines feed CLIP the prompt as written)."""
        return torch.cat([self._cached(("clip", p), lambda p=p: {"pooled": self._pooled([p])})["pooled"]
                          for p in prompts]).to(self.parts.clip.device)

    def _pooled(self, prompts: list[str]) -> torch.Tensor:
        tok = self.parts.clip_tokenizer
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.parts.clip.device)
        with torch.no_grad():
            return self.parts.clip(ids, output_hidden_states=False).pooler_output.float()

    def _cached(self, key: tuple, compute):
        if self.cache is None:
            return compute()
        return self.cache.get((*key, str(self.parts.path), self.max_tokens), compute)

    def encode(self, prompts: list[str], table: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 hidden states [B, L, C], token ids [B, L]). Prompts without learned tokens come from the cache."""
        ids = self.t5_ids(prompts)
        if bool((self.learned_rows(ids) >= 0).any()):
            return self.t5(ids, table), ids
        hidden = [self._cached(("t5", p), lambda row=row: {"t5": self.t5(row[None], None).float()})["t5"]
                  for p, row in zip(prompts, ids, strict=True)]
        return torch.cat(hidden).to(self.parts.t5.device), ids

    def t5(self, ids: torch.Tensor, table: torch.Tensor | None) -> torch.Tensor:
        """T5 hidden states [B, L, C]; positions of learned tokens take their row of `table` as input."""
        t5 = self.parts.t5
        ids = ids.to(t5.device)
        rows = self.learned_rows(ids)
        embed = t5.get_input_embeddings()
        inputs = embed(ids.clamp(max=embed.num_embeddings - 1))
        if table is None or not bool((rows >= 0).any()):
            with torch.no_grad():
                return t5(inputs_embeds=inputs).last_hidden_state
        learned = table.to(inputs.dtype)[rows.clamp(min=0)]
        inputs = torch.where((rows >= 0).unsqueeze(-1), learned, inputs)
        return t5(inputs_embeds=inputs).last_hidden_state


def pack(latent: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] latents -> [B, (H/2)(W/2), 4C] FLUX tokens (2x2 patches, channel-major like diffusers)."""
    b, c, h, w = latent.shape
    return latent.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    b = tokens.shape[0]
    return tokens.reshape(b, height // 2, width // 2, -1, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, height, width)


def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> shifted and scaled latents (the mode, so caching is exact)."""
    with torch.no_grad():
        z = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()
    return (z.float() - vae.config.shift_factor) * vae.config.scaling_factor


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = latents / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(z.to(vae.device, vae.dtype)).sample.float().clamp(-1, 1)


class ReduxEncoder:
    """FLUX.1-Redux image tokens: SigLIP patch features projected to the T5 width (frozen)."""

    def __init__(self, path: str | Path, dtype: torch.dtype, device):
        from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
        from transformers import SiglipVisionModel

        path = Path(path)
        _check_folder(path, ("image_encoder", "image_embedder"), "FLUX.1-Redux")
        self.encoder = SiglipVisionModel.from_pretrained(path / "image_encoder", torch_dtype=dtype)
        self.embedder = ReduxImageEncoder.from_pretrained(path / "image_embedder", torch_dtype=dtype)
        for module in (self.encoder, self.embedder):
            module.requires_grad_(False).eval().to(device)
        self.image_size = self.encoder.config.image_size

    @property
    def width(self) -> int:
        return self.embedder.redux_down.out_features

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, n, T5 width]. SigLIP normalises to [-1, 1] (mean = std = 0.5)."""
        pixels = F.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bicubic",
                               align_corners=False, antialias=True).clamp(-1, 1)
        with torch.no_grad():
            features = self.encoder(pixels.to(self.encoder.device, self.encoder.dtype)).last_hidden_state
            return self.embedder(features).image_embeds.float()
