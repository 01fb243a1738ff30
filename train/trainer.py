"""The training loop: accelerate for devices, precision, accumulation and multi-GPU/multi-node.

Run it with `python -m refcustom.train train --config cfg.yaml` on one GPU, or under
`accelerate launch -m refcustom.train train --config cfg.yaml` for several GPUs or machines
(accelerate's own launcher; nothing here starts processes).

Resume is exact: every random choice (data order, prompt variants, timesteps, noise, dropped
tokens) comes from the batch plan (a pure function of seed and epoch) and one torch.Generator per
process whose state is checkpointed with the trainable weights, the optimizer and the position in
the epoch (and, under fp16, the GradScaler's scale). A checkpoint is written to a temporary folder
and renamed, so an interruption never leaves a half-written one. Checkpoints hold safetensors and
JSON only, never pickles (checkpoint_state.py says why), and resume refuses a changed config unless
the change is allowed by name.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import checkpoint_state
from .cache import TensorCache
from .components import DTYPES, PromptEncoder, decode_latents, encode_latents, load_flux, pack, unpack
from .config import TrainConfig
from .dataset import ReferenceDataset, batch_plan, collate, read_metadata, select_subsets
from .tiny_model import write_tiny_flux, write_tiny_redux

CHECKPOINTS = "checkpoints"


class Trainer:
    def __init__(self, config: TrainConfig, accelerator=None, allow_config_change: bool | list[str] = False):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        self.config = config
        # Resume refuses a checkpoint trained with other options unless they are named here (True: any).
        self.allow_config_change = allow_config_change
        self.output = Path(config.output_dir)
        # Under DDP some trainable tensors may get no gradient in a step (L_holder skips plain prompts,
        # the placeholder rows live outside the transformer's forward): let DDP look for them.
        self.accelerator = accelerator or Accelerator(
            mixed_precision=config.optim.mixed_precision,
            gradient_accumulation_steps=config.optim.gradient_accumulation_steps,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        device = self.accelerator.device
        # peft draws its LoRA init from the global RNG: seed it so two runs of one config start equal.
        set_seed(config.seed)
        # The dataset is checked first: a bad metadata line must not cost a model load (or write the tiny one).
        self.records = read_metadata(config.data.folder)
        self.model_path = self._model_path()
        self.parts = load_flux(self.model_path, DTYPES[config.model.weight_dtype], device)
        cache_dir = Path(config.data.cache_dir or self.output / "cache")
        self.latent_cache = TensorCache(cache_dir / "latents", enabled=config.data.cache)
        self.dataset = ReferenceDataset(self.records, config.data.resolution, config.data.reference_resolution)

        if config.mode == "dreamo":
            from .dreamo_method import DreamOMethod as Method
        else:
            from .aligngen_method import AlignGenMethod as Method
        self.prompts = PromptEncoder(self.parts, config.model.max_text_tokens, Method.learned_tokens,
                                     cache=TensorCache(cache_dir / "text", enabled=config.data.cache))
        self.method = Method(config, self.parts, self.prompts, redux_path=self.redux_path(),
                             redux_cache=TensorCache(cache_dir / "redux", enabled=config.data.cache))
        if config.model.gradient_checkpointing:
            self.parts.transformer.enable_gradient_checkpointing()
        params = [p for p in self.method.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.optim.learning_rate, betas=tuple(config.optim.betas),
                                           weight_decay=config.optim.weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(self.method.model, self.optimizer)
        rank = self.accelerator.process_index
        self.generator = torch.Generator().manual_seed(config.seed * 7919 + rank)
        self.step = 0  # optimizer steps done
        self.epoch = 0
        self.position = 0  # micro-batches of the current epoch's plan already used
        self.plan_stage = 0  # the stage the current plan belongs to
        self.log_path = self.output / "log.jsonl"

    # -- setup -------------------------------------------------------------------------------------

    def _model_path(self) -> Path:
        pretrained = self.config.model.pretrained
        return Path(pretrained) if pretrained != "tiny" else self._tiny(self._tiny_flux_dir(), write_tiny_flux)

    def redux_path(self) -> Path | None:
        redux = self.config.model.redux
        if redux != "tiny":
            return Path(redux) if redux else None
        return self._tiny(self._tiny_flux_dir().with_name("tiny-redux"), write_tiny_redux)

    def _tiny_flux_dir(self) -> Path:
        return Path(self.config.model.tiny_dir or self.output / "tiny-flux")

    def _tiny(self, folder: Path, write) -> Path:
        """The offline tiny model folder, written once by the main process while the others wait."""
        if self.accelerator.is_main_process:
            write(folder)
        self.accelerator.wait_for_everyone()
        return folder

    # -- data --------------------------------------------------------------------------------------

    def plan(self, stage_index: int, epoch: int) -> list[list[int]]:
        """This process's micro-batches (record indices) for one epoch of one stage."""
        stage = self.config.stages[stage_index]
        chosen = select_subsets(self.records, stage.subsets)
        index_of = {id(r): i for i, r in enumerate(self.records)}
        # Each stage gets its own order: a stage change starts a fresh epoch over the stage's subsets.
        local = batch_plan(chosen, self.config.data.batch_size, self.config.seed + 1009 * stage_index, epoch)
        batches = [[index_of[id(chosen[i])] for i in b] for b in local]
        n = self.accelerator.num_processes
        usable = len(batches) // n * n
        if usable == 0:
            raise ValueError(f"stage {stage.name!r}: {len(batches)} batches cannot be shared by {n} processes; "
                             "add data or lower data.batch_size")
        return batches[:usable][self.accelerator.process_index::n]

    def latents_for(self, batch: dict) -> dict:
        """Adds target and reference latents (cached per record) to a collated batch."""
        cfg = self.config.data
        vae = self.parts.vae
        targets, refs = [], None
        for row, index in enumerate(batch["index"].tolist()):
            record = self.records[index]
            key = (record.image, *record.references, cfg.resolution, cfg.reference_resolution, str(self.model_path))

            def compute(row=row):
                out = {"image": encode_latents(vae, batch["image"][row:row + 1])[0]}
                for k, ref in enumerate(batch["references"]):
                    out[f"ref{k}"] = encode_latents(vae, ref[row:row + 1])[0]
                return out

            entry = self.latent_cache.get(key, compute)
            targets.append(entry["image"])
            refs = refs or [[] for _ in batch["references"]]
            for k in range(len(refs)):
                refs[k].append(entry[f"ref{k}"])
        batch["latents"] = torch.stack(targets)
        batch["reference_latents"] = [torch.stack(r) for r in refs]
        batch["lines"] = [self.records[i].line for i in batch["index"].tolist()]
        return self.method.prepare_batch(batch, self.records)

    def next_batch(self):
        """The next micro-batch at (stage, epoch, position), advancing the position."""
        stage_index, stage = self.config.stage_at(self.step)
        if stage_index != self.plan_stage:
            self.plan_stage, self.epoch, self.position = stage_index, 0, 0
        plan = self.plan(stage_index, self.epoch)
        if self.position >= len(plan):
            self.epoch, self.position = self.epoch + 1, 0
            plan = self.plan(stage_index, self.epoch)
        indices = plan[self.position]
        self.position += 1
        return stage_index, stage, self.latents_for(collate([self.dataset[i] for i in indices]))

    # -- checkpoints -------------------------------------------------------------------------------

    def checkpoint_dirs(self) -> list[Path]:
        folder = self.output / CHECKPOINTS
        return sorted(folder.glob("step-*[0-9]"), key=lambda p: int(p.name.split("-")[1])) if folder.is_dir() else []

    def save_checkpoint(self):
        acc = self.accelerator
        final = self.output / CHECKPOINTS / f"step-{self.step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        checkpoint_state.save_rng(tmp, acc.process_index, self.generator)
        if acc.is_main_process:
            save_file(self.method.trainable_state_dict(), str(tmp / "trainable.safetensors"))
            checkpoint_state.save_optimizer(tmp, self.optimizer.state_dict())
            state = {"step": self.step, "epoch": self.epoch, "position": self.position, "plan_stage": self.plan_stage,
                     "processes": acc.num_processes, "grad_scaler": checkpoint_state.scaler_state(acc.scaler),
                     "config": asdict(self.config)}
            checkpoint_state.write_json(tmp / "state.json", state)
        acc.wait_for_everyone()
        if acc.is_main_process:
            os.replace(tmp, final)  # atomic: a checkpoint folder either exists whole or not at all
            for old in self.checkpoint_dirs()[:-self.config.run.keep_checkpoints]:
                shutil.rmtree(old)
        acc.wait_for_everyone()

    def resume(self) -> bool:
        found = self.checkpoint_dirs()
        if not found:
            return False
        last = found[-1]
        checkpoint_state.refuse_pickles(last)
        state = checkpoint_state.read_json(last / "state.json")
        if state["processes"] != self.accelerator.num_processes:
            raise ValueError(f"{last} was written by {state['processes']} processes; resume with the same number "
                             f"(this run has {self.accelerator.num_processes}) to continue exactly")
        current = json.loads(json.dumps(asdict(self.config)))
        changed = checkpoint_state.config_differences(state["config"], current, self.allow_config_change)
        if changed:
            raise ValueError(f"{last} was trained with another config; changed: {'; '.join(changed)}. Resume with the "
                             "config the run started with, start a new run (another output_dir), or accept the change "
                             "with --allow-config-change KEY[,KEY] (a key or a section such as stages or optim; "
                             "alone: every key)")
        self.method.load_trainable_state_dict(checkpoint_state.read_tensors(last / "trainable.safetensors"))
        self.optimizer.load_state_dict(checkpoint_state.load_optimizer(last))
        checkpoint_state.load_rng(last, self.accelerator.process_index, self.generator)
        checkpoint_state.set_scaler_state(self.accelerator.scaler, state.get("grad_scaler"))
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.plan_stage = state["plan_stage"]
        return True

    # -- the loop ----------------------------------------------------------------------------------

    def train(self, max_steps: int | None = None) -> Path | None:
        """Train to the end of the last stage (or `max_steps` more steps); returns the export path."""
        from tqdm.auto import tqdm

        acc = self.accelerator
        resumed = self.resume()
        if acc.is_main_process:
            self.output.mkdir(parents=True, exist_ok=True)
            if not resumed and self.log_path.exists():
                self.log_path.unlink()
        total = self.config.total_steps
        stop = total if max_steps is None else min(total, self.step + max_steps)
        bar = tqdm(total=total, initial=self.step, disable=not acc.is_main_process, desc=self.config.mode)
        device = acc.device
        self.model.train()
        terms_sum: dict[str, float] = {}
        micro = 0
        while self.step < stop:
            stage_index, stage, batch = self.next_batch()
            for group in self.optimizer.param_groups:
                group["lr"] = stage.learning_rate or self.config.optim.learning_rate
            with acc.accumulate(self.model):
                loss, terms = self.method.loss(self.model, batch, stage, self.generator, device)
                acc.backward(loss)
                if acc.sync_gradients and self.config.optim.grad_clip > 0:
                    acc.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"loss became {float(loss)} at step {self.step}; lower the learning rate "
                                         "or use bf16 instead of fp16")
            micro += 1
            for name, value in {"loss": loss.detach(), **terms}.items():
                terms_sum[name] = terms_sum.get(name, 0.0) + float(value)
            if not acc.sync_gradients:
                continue
            self.step += 1
            means = {k: v / micro for k, v in terms_sum.items()}
            terms_sum, micro = {}, 0
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in means.items()} | {"stage": stage.name})
            if acc.is_main_process and (self.step % self.config.run.log_every == 0 or self.step == stop):
                with self.log_path.open("a") as log:
                    log.write(json.dumps({"step": self.step, "stage": stage.name, "stage_index": stage_index,
                                          "lr": self.optimizer.param_groups[0]["lr"], **means}) + "\n")
            if self.step % self.config.run.checkpoint_every == 0 or self.step == stop:
                self.save_checkpoint()
            if self.config.run.sample_every and self.step % self.config.run.sample_every == 0:
                self.write_samples()
        bar.close()
        if self.step < total:
            return None
        self.write_samples()
        return self.export()

    def evaluate(self, batches: int = 4, seed: int = 1234) -> dict[str, float]:
        """Mean loss terms on the first `batches` batches of stage 0 with fixed noise: comparable across
        training (the random draws do not depend on how far training went)."""
        generator = torch.Generator().manual_seed(seed)
        plan = self.plan(0, 0)[:batches]
        sums: dict[str, float] = {}
        self.model.eval()
        with torch.no_grad():
            for indices in plan:
                batch = self.latents_for(collate([self.dataset[i] for i in indices]))
                loss, terms = self.method.loss(self.model, batch, self.config.stages[0], generator,
                                               self.accelerator.device)
                for name, value in {"loss": loss, **terms}.items():
                    sums[name] = sums.get(name, 0.0) + float(value) / len(plan)
        self.model.train()
        return sums

    # -- samples and export ------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, record_index: int, steps: int, seed: int) -> torch.Tensor:
        """Generate the record's target from its references and prompt: image [3, H, W] in [-1, 1]."""
        import numpy as np

        device = self.accelerator.device
        batch = self.latents_for(collate([self.dataset[record_index]]))
        height, width = batch["latents"].shape[2:]
        grids = [(height // 2, width // 2)] + [(r.shape[2] // 2, r.shape[3] // 2) for r in batch["reference_latents"]]
        batch["reference_latents"] = [r.to(device) for r in batch["reference_latents"]]
        context, pooled = self.method.sampling_text(batch, device)
        noise_gen = torch.Generator().manual_seed(seed)
        x = pack(torch.randn(batch["latents"].shape, generator=noise_gen)).to(device)
        scheduler = self.parts.scheduler
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting"):
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift
            kwargs["mu"] = calculate_shift(x.shape[1])
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), device=device, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        for t in scheduler.timesteps:
            sigma = (t / 1000).expand(x.shape[0]).to(device)
            velocity = self.method.predict(model, x, batch, grids, sigma, context, pooled)
            x = scheduler.step(velocity, t, x).prev_sample
        model.train()
        return decode_latents(self.parts.vae, unpack(x, height, width))[0]

    def write_samples(self):
        if not self.accelerator.is_main_process:
            return
        from PIL import Image

        folder = self.output / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(min(self.config.run.sample_count, len(self.records))):
            image = self.sample(i, self.config.run.sample_steps, seed=self.config.seed + i)
            pixels = ((image.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).clip(0, 255).astype("uint8")
            Image.fromarray(pixels).save(folder / f"step-{self.step:08d}-{i}.png")

    def export(self) -> Path | None:
        from .export import export_trained

        path = None
        if self.accelerator.is_main_process:
            name = self.config.run.export_name or f"{self.config.mode}_lora.safetensors"
            path = export_trained(self.method, self.config, self.output / name, str(self.model_path),
                                  time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.accelerator.wait_for_everyone()
        return path
