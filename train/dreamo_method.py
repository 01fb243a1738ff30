"""One DreamO training step: prompt variants, noise, token drop, forward, the three losses.

L = lambda_diff * L_diff + lambda_route * L_route + lambda_holder * L_holder (paper Eq. 5). With
probability `plain_prompt_probability` a sample's prompt loses its placeholders and L_holder skips
it, so the model still follows ordinary prompts. A stage's `reference_token_drop` keeps a random
subset of each reference's tokens (with their own RoPE ids and embeddings), DreamO's stage 3.
"""

from __future__ import annotations

import torch

from ..model.placeholders import has_placeholders, strip_placeholders
from . import losses
from .components import PromptEncoder, pack
from .dreamo_model import PLACEHOLDER_TOKENS, DreamOFlux, placeholder_keys, split_captured


class DreamOMethod:
    learned_tokens = PLACEHOLDER_TOKENS

    def __init__(self, config, parts, prompts: PromptEncoder, **_):
        self.config = config
        self.prompts = prompts
        self.model = DreamOFlux(parts.transformer, prompts.t5_width, config.lora.rank, config.lora.alpha,
                                config.dreamo.routing_layers, init_seed=config.seed)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.trainable_state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]):
        self.model.load_trainable_state_dict(state)

    def learned_table(self, model) -> torch.Tensor:
        return self.model.placeholders  # the unwrapped module's parameter (model may be DDP-wrapped)

    def placeholder_positions(self, ids: torch.Tensor, n_refs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """First T5 position of [ref#1..n] per sample [B, n], and whether all n are present [B]."""
        rows = self.prompts.learned_rows(ids)
        positions = torch.zeros(ids.shape[0], n_refs, dtype=torch.long)
        present = torch.ones(ids.shape[0], dtype=torch.bool)
        for k in range(n_refs):
            hit = rows == k
            present &= hit.any(dim=1)
            positions[:, k] = hit.float().argmax(dim=1)
        return positions, present

    def loss(self, model: DreamOFlux, batch: dict, stage, generator: torch.Generator, device):
        cfg = self.config.dreamo
        latents = batch["latents"].to(device)
        refs = [r.to(device) for r in batch["reference_latents"]]
        n_refs = len(refs)
        prompts = []
        for prompt in batch["prompt"]:
            plain = has_placeholders(prompt) and float(torch.rand((), generator=generator)) < cfg.plain_prompt_probability
            prompts.append(strip_placeholders(prompt) if plain else prompt)
        context, ids = self.prompts.encode(prompts, self.learned_table(model))
        positions, holder_valid = self.placeholder_positions(ids, n_refs)
        pooled = self.prompts.pooled(prompts)

        batch_size = latents.shape[0]
        sigma = losses.sample_sigmas(batch_size, generator, self.config.optim.timestep_sampling,
                                     self.config.optim.logit_mean, self.config.optim.logit_std)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        sigma = sigma.to(device)
        noisy = losses.noisy_latents(latents, noise, sigma)
        keep = []
        for ref in refs:
            n = (ref.shape[2] // 2) * (ref.shape[3] // 2)
            if stage.reference_token_drop > 0:
                count = max(1, round(n * (1.0 - stage.reference_token_drop)))
                keep.append(torch.randperm(n, generator=generator)[:count].sort().values)
            else:
                keep.append(None)

        grids = [(latents.shape[2] // 2, latents.shape[3] // 2)] + [(r.shape[2] // 2, r.shape[3] // 2) for r in refs]
        want_attention = cfg.lambda_route > 0 or cfg.lambda_holder > 0
        guidance = torch.full((batch_size,), self.config.model.guidance, device=device)
        prediction = model(pack(noisy), [pack(r) for r in refs], list(range(1, n_refs + 1)), grids, context, pooled,
                           sigma, guidance, keep=keep, capture=want_attention)
        diff = losses.flow_matching_loss(prediction, pack(latents), pack(noise))
        route = holder = diff.new_zeros(())
        captured = getattr(model, "module", model).captured
        if want_attention and captured:
            counts = [len(k) if k is not None else g[0] * g[1] for k, g in zip(keep, grids[1:], strict=True)]
            split = [split_captured(c, grids[0][0] * grids[0][1], counts) for c in captured]
            if cfg.lambda_route > 0:
                target = losses.mask_to_tokens(batch["masks"]).to(device)
                route = losses.routing_loss(split, target, batch["mask_valid"].to(device))
            if cfg.lambda_holder > 0:
                holder = losses.placeholder_loss(
                    [(q, placeholder_keys(c, positions)) for (q, _), c in zip(split, captured, strict=True)],
                    holder_valid.to(device))
        getattr(model, "module", model).captured = []
        total = cfg.lambda_diff * diff + cfg.lambda_route * route + cfg.lambda_holder * holder
        return total, {"diff": diff.detach(), "route": route.detach(), "holder": holder.detach()}

    def prepare_batch(self, batch: dict, records) -> dict:
        return batch

    def sampling_text(self, batch: dict, device):
        context, _ = self.prompts.encode(batch["prompt"], self.model.placeholders)
        return context, self.prompts.pooled(batch["prompt"])

    def predict(self, model, noisy_tokens, batch, grids, sigma, context, pooled):
        """Velocity for sampling (no losses, all reference tokens)."""
        refs = [pack(r) for r in batch["reference_latents"]]
        guidance = torch.full((noisy_tokens.shape[0],), self.config.model.guidance, device=noisy_tokens.device)
        return model(noisy_tokens, refs, list(range(1, len(refs) + 1)), grids, context, pooled, sigma, guidance)
