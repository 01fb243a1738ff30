"""One AlignGen training step (paper section 3; shared/notes/syncd-aligngen.md).

Per sample: the concept name (the record's `concepts[0]`) is, with probability
`concept_substitution`, replaced in the prompt by one of its parent names (`concepts[1:]`); S* is
written before the name; the reference is, with probability `reference_dropout`, a black image.
T5 encodes the prompt with S*'s trainable input row; the rows of S* and the name go through the
DEM with the reference's Redux tokens, and only S*'s row is replaced by S*'. FLUX then predicts
the velocity with the reference tokens appended, the reference-only LoRA and the selective mask.
Loss: flow matching.
"""

from __future__ import annotations

import re

import torch

from ..model.aligngen import insert_learned_token, replace_learned_token
from ..model.placeholders import strip_placeholders
from . import losses
from .aligngen_model import AlignGenFlux
from .components import ReduxEncoder, encode_latents, pack


class AlignGenMethod:
    learned_tokens = ["S*"]

    def __init__(self, config, parts, prompts, redux_path=None, redux_cache=None):
        if redux_path is None:
            raise ValueError("aligngen mode needs model.redux (a FLUX.1-Redux folder, or 'tiny')")
        self.config = config
        self.parts = parts
        self.prompts = prompts
        self.redux = ReduxEncoder(redux_path, parts.transformer.dtype, parts.transformer.device)
        self.redux_cache = redux_cache
        self.redux_path = str(redux_path)
        self.token = config.aligngen.learned_token
        if self.token != "S*":
            prompts.t5_tokenizer.add_tokens([self.token])
            prompts.learned_tokens = [self.token]
            prompts.learned_ids = torch.tensor(prompts.t5_tokenizer.convert_tokens_to_ids([self.token]))
        embed = parts.t5.get_input_embeddings().weight.detach().float()
        generator = torch.Generator().manual_seed(config.seed)
        init = embed.mean(0) + 0.1 * embed.std(0) * torch.randn(embed.shape[1], generator=generator)
        self.model = AlignGenFlux(parts.transformer, prompts.t5_width, self.redux.width, config.lora.rank,
                                  config.lora.alpha, config.aligngen.dem_heads, init)
        black = -torch.ones(1, 3, config.data.reference_resolution, config.data.reference_resolution)
        self.black_latent = encode_latents(parts.vae, black)[0]
        self.black_redux = self.redux(black)[0]

    # -- checkpoint / export -------------------------------------------------------------------------

    def trainable_state_dict(self):
        return self.model.trainable_state_dict()

    def load_trainable_state_dict(self, state):
        self.model.load_trainable_state_dict(state)

    def learned_table(self, model) -> torch.Tensor:
        return self.model.learned_token

    def export_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        state = self.model.trainable_state_dict()
        tensors = {f"aligngen.{k}": v for k, v in state.items()}
        dem = self.model.dem.config
        extra = {"layout": "aligngen-v2", "rank": self.config.lora.rank, "lora_scale": self.model.lora_scale,
                 "dem_heads": dem["heads"], "dem_mlp_ratio": dem["mlp_ratio"], "learned_token": self.token}
        return tensors, extra

    # -- prompts ---------------------------------------------------------------------------------------

    def prompt_with_token(self, prompt: str, concept: str, line: int) -> str:
        try:
            before, rest = insert_learned_token(prompt, concept, self.token)
        except ValueError as error:
            raise ValueError(f"metadata.jsonl line {line}: {error}") from error
        return f"{before} {self.token} {rest}".lstrip()

    def text(self, prompts: list[str], concepts: list[str], redux: torch.Tensor, device):
        """(context with S* replaced by S*', pooled, concept mask [B, T])."""
        ids = self.prompts.t5_ids(prompts)
        rows = self.prompts.learned_rows(ids)
        hidden = self.prompts.t5(ids, self.model.learned_token)
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        positions = []
        updated = []
        for b, concept in enumerate(concepts):
            hits = (rows[b] == 0).nonzero()
            if len(hits) == 0:
                raise ValueError(f"prompt {prompts[b]!r} lost its {self.token} token (truncated by max_text_tokens?)")
            p = int(hits[0])
            length = len(self.prompts.t5_tokenizer(concept, add_special_tokens=False).input_ids)
            end = min(p + 1 + length, ids.shape[1])
            mask[b, p:end] = True
            positions.append(p)
            updated.append(self.model.dem(hidden[b:b + 1, p:end].float(), redux[b:b + 1].to(device))[0, 0])
        context = replace_learned_token(hidden, torch.tensor(positions, device=hidden.device),
                                        torch.stack(updated).to(hidden.dtype))
        return context, self.prompts.pooled(prompts), mask

    def prepare_batch(self, batch: dict, records) -> dict:
        batch["redux"] = self.redux_tokens(batch, records)
        return batch

    def redux_tokens(self, batch: dict, records) -> torch.Tensor:
        out = []
        for row, index in enumerate(batch["index"].tolist()):
            record = records[index]
            key = ("redux", record.references[0], self.config.data.reference_resolution, self.redux_path)
            compute = lambda row=row: {"redux": self.redux(batch["references"][0][row:row + 1])[0]}  # noqa: E731
            out.append(self.redux_cache.get(key, compute)["redux"] if self.redux_cache else compute()["redux"])
        return torch.stack(out)

    # -- training and sampling ---------------------------------------------------------------------

    def loss(self, model, batch: dict, stage, generator: torch.Generator, device):
        cfg = self.config.aligngen
        if len(batch["reference_latents"]) != 1:
            raise ValueError(f"AlignGen trains single-concept records with one reference; this batch has "
                             f"{len(batch['reference_latents'])} (filter the dataset with a stage's subsets)")
        latents = batch["latents"].to(device)
        reference = batch["reference_latents"][0].clone()
        redux = batch["redux"].clone()
        prompts, concepts = [], []
        for b, (prompt, names) in enumerate(zip(batch["prompt"], batch["concepts"], strict=True)):
            line = batch["lines"][b]
            prompt = strip_placeholders(prompt)  # a dataset shared with DreamO may carry [ref#k]
            if not names:
                raise ValueError(f"metadata.jsonl line {line}: AlignGen needs a 'concepts' list (the concept name "
                                 "first, then broader names)")
            concept = names[0]
            if len(names) > 1 and float(torch.rand((), generator=generator)) < cfg.concept_substitution:
                parent = names[1 + int(torch.randint(len(names) - 1, (), generator=generator))]
                prompt = re.sub(re.escape(concept), parent, prompt, count=1, flags=re.IGNORECASE)
                concept = parent
            prompts.append(self.prompt_with_token(prompt, concept, line))
            concepts.append(concept)
            if float(torch.rand((), generator=generator)) < cfg.reference_dropout:
                reference[b] = self.black_latent
                redux[b] = self.black_redux
        context, pooled, concept_mask = self.text(prompts, concepts, redux, device)
        sigma = losses.sample_sigmas(latents.shape[0], generator, self.config.optim.timestep_sampling,
                                     self.config.optim.logit_mean, self.config.optim.logit_std).to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        noisy = losses.noisy_latents(latents, noise, sigma)
        grids = [(latents.shape[2] // 2, latents.shape[3] // 2), (reference.shape[2] // 2, reference.shape[3] // 2)]
        guidance = torch.full((latents.shape[0],), self.config.model.guidance, device=device)
        prediction = model(pack(noisy), pack(reference.to(device)), grids, context, pooled, sigma, guidance,
                           concept_mask)
        diff = losses.flow_matching_loss(prediction, pack(latents), pack(noise))
        return diff, {"diff": diff.detach()}

    def sampling_text(self, batch: dict, device):
        concepts = [names[0] for names in batch["concepts"]]
        prompts = [self.prompt_with_token(strip_placeholders(p), c, line) for p, c, line in zip(batch["prompt"], concepts, batch["lines"],
                                                                              strict=True)]
        context, pooled, mask = self.text(prompts, concepts, batch["redux"], device)
        batch["concept_mask"] = mask
        return context, pooled

    def predict(self, model, noisy_tokens, batch, grids, sigma, context, pooled):
        guidance = torch.full((noisy_tokens.shape[0],), self.config.model.guidance, device=noisy_tokens.device)
        reference = pack(batch["reference_latents"][0].to(noisy_tokens.device))
        return model(noisy_tokens, reference, grids, context, pooled, sigma, guidance, batch["concept_mask"])
