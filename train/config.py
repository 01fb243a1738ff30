"""The training configuration: one YAML or TOML file, every option documented here.

Each option is a dataclass field whose `doc` metadata is its documentation; `default_config_text`
renders them as a commented YAML file (`python -m refcustom.train print-config`), so the docs and
the code cannot drift apart. Unknown keys are errors that list the valid ones: a typo must not
silently train with a default.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

MODES = ("dreamo", "aligngen")


def option(default, doc: str, **kwargs):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc}, **kwargs)
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"doc": doc}, **kwargs)
    return field(default=default, metadata={"doc": doc}, **kwargs)


@dataclass
class ModelOptions:
    pretrained: str = option(
        "tiny",
        "Base model: a diffusers FLUX.1-dev folder (transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, "
        "tokenizer_2/), or 'tiny' for a small random FLUX written to tiny_dir (offline; for trying the pipeline).",
    )
    tiny_dir: str | None = option(None, "Where the 'tiny' model is written (default: <output_dir>/tiny-flux).")
    weight_dtype: str = option("float32", "dtype of the frozen base weights: float32, bfloat16 or float16.")
    max_text_tokens: int = option(512, "T5 sequence length (FLUX.1-dev: 512).")
    guidance: float = option(3.5, "Distilled guidance value fed to FLUX.1-dev during training.")
    gradient_checkpointing: bool = option(False, "Recompute block activations in the backward pass (less memory).")
    redux: str | None = option(
        None,
        "AlignGen only: a diffusers FLUX.1-Redux folder (image_encoder/ = SigLIP, image_embedder/ = Redux "
        "projector), or 'tiny' for a random one matching the tiny model.",
    )


@dataclass
class DataOptions:
    folder: str = option("", "Dataset folder with metadata.jsonl (see README, 'Training data').")
    resolution: int = option(512, "Target images are resized and centre-cropped to this square size (multiple of 16).")
    reference_resolution: int = option(512, "Reference images: same, at this size (multiple of 16).")
    batch_size: int = option(1, "Samples per step and process (batches never mix reference counts).")
    num_workers: int = option(0, "DataLoader worker processes.")
    cache: bool = option(True, "Cache VAE latents (and prompt encodings that do not depend on trained parts) on disk.")
    cache_dir: str | None = option(None, "Cache folder (default: <output_dir>/cache). Safe to delete.")


@dataclass
class LoraOptions:
    rank: int = option(128, "LoRA rank (DreamO official: 128; AlignGen paper: 16).")
    alpha: float | None = option(None, "LoRA alpha; null means alpha = rank (scale 1, as the official files).")


@dataclass
class DreamOOptions:
    lambda_diff: float = option(1.0, "Weight of the flow-matching loss.")
    lambda_route: float = option(0.1, "Weight of the routing loss L_route (0 disables it).")
    lambda_holder: float = option(0.1, "Weight of the placeholder loss L_holder (0 disables it).")
    routing_layers: list = option(
        [2, 8, 14],
        "Double-block indices whose reference-to-image attention L_route and L_holder read (DreamO shows 2, 8, 14). "
        "Indices beyond the model's depth are an error.",
    )
    plain_prompt_probability: float = option(
        0.5, "Probability of training on the prompt with its [ref#k] placeholders removed (L_holder is then dropped)."
    )


@dataclass
class AlignGenOptions:
    dem_heads: int = option(8, "Attention heads of the Deviation Extraction Module.")
    reference_dropout: float = option(0.5, "Probability of replacing the reference by a black image.")
    concept_substitution: float = option(
        0.3, "Probability of replacing the concept name by one of its parent names (the record's concepts list)."
    )
    learned_token: str = option("S*", "The learnable token's text; the trainer writes it before the concept name.")


@dataclass
class OptimOptions:
    learning_rate: float = option(4e-5, "Default learning rate (a stage may override it).")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    betas: list = option([0.9, 0.999], "AdamW betas.")
    grad_clip: float = option(1.0, "Clip the gradient norm to this (0 disables).")
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step.")
    mixed_precision: str = option("no", "accelerate mixed precision: no, fp16 or bf16.")
    timestep_sampling: str = option("logit_normal", "How sigma is drawn: logit_normal (SD3/FLUX practice) or uniform.")
    logit_mean: float = option(0.0, "Mean of the logit-normal sigma distribution.")
    logit_std: float = option(1.0, "Std of the logit-normal sigma distribution.")


@dataclass
class StageOptions:
    name: str = option("train", "Stage name (shown in logs and saved in the export's metadata).")
    steps: int = option(1000, "Optimizer steps in this stage.")
    learning_rate: float | None = option(None, "Learning rate of this stage (null: optim.learning_rate).")
    subsets: list | None = option(None, "Dataset subsets (the records' 'subset' tag) this stage trains on; null: all.")
    reference_token_drop: float = option(
        0.0, "Fraction of reference tokens dropped at random (DreamO stage 3: 0.95, against copy-paste)."
    )


@dataclass
class RunOptions:
    log_every: int = option(10, "Steps between loss lines in the log (the progress bar updates every step).")
    checkpoint_every: int = option(500, "Steps between checkpoints (written atomically; resume continues from the last).")
    keep_checkpoints: int = option(2, "How many checkpoints to keep.")
    sample_every: int = option(0, "Steps between sample images (0: only at the end).")
    sample_steps: int = option(20, "Euler steps for sample images.")
    sample_count: int = option(2, "Dataset records used for sample images (the first ones).")
    export_name: str | None = option(None, "Export file name (default: <mode>_lora.safetensors).")
    export_dtype: str = option("bfloat16", "dtype of the exported tensors: bfloat16 (as the official files), float16, float32.")


@dataclass
class TrainConfig:
    mode: str = option("dreamo", "What to train: dreamo or aligngen.")
    output_dir: str = option("runs/refcustom", "Checkpoints, samples, logs and the export go here.")
    seed: int = option(0, "Seed of every random choice (data order, noise, timesteps, prompt variants).")
    model: ModelOptions = option(ModelOptions(), "Base model.")
    data: DataOptions = option(DataOptions(), "Dataset.")
    lora: LoraOptions = option(LoraOptions(), "LoRA.")
    dreamo: DreamOOptions = option(DreamOOptions(), "DreamO losses.")
    aligngen: AlignGenOptions = option(AlignGenOptions(), "AlignGen parts.")
    optim: OptimOptions = option(OptimOptions(), "Optimizer and noise schedule.")
    stages: list = option(
        [{"name": "train", "steps": 1000}],
        "Progressive stages, run in order (DreamO: warm-up on simple subsets, all data, then quality with "
        "reference_token_drop 0.95). Each entry takes the StageOptions keys.",
    )
    run: RunOptions = option(RunOptions(), "Logging, checkpoints, samples, export.")

    def __post_init__(self):
        self.stages = [s if isinstance(s, StageOptions) else _build(StageOptions, s, "stages[]") for s in self.stages]
        self.validate()

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> tuple[int, StageOptions]:
        """The stage that optimizer step `step` (0-based) belongs to."""
        end = 0
        for i, stage in enumerate(self.stages):
            end += stage.steps
            if step < end:
                return i, stage
        return len(self.stages) - 1, self.stages[-1]

    def validate(self):
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("resolution", "reference_resolution"):
            value = getattr(self.data, name)
            if value < 16 or value % 16:
                problems.append(f"data.{name} must be a positive multiple of 16, got {value}")
        if not self.stages:
            problems.append("stages is empty: give at least one stage with a step count")
        for i, stage in enumerate(self.stages):
            if stage.steps <= 0:
                problems.append(f"stages[{i}] ({stage.name}) needs steps > 0")
            if not 0.0 <= stage.reference_token_drop < 1.0:
                problems.append(f"stages[{i}].reference_token_drop must be in [0, 1), got {stage.reference_token_drop}")
        if self.optim.mixed_precision not in ("no", "fp16", "bf16"):
            problems.append(f"optim.mixed_precision must be no, fp16 or bf16, got {self.optim.mixed_precision!r}")
        if self.optim.timestep_sampling not in ("logit_normal", "uniform"):
            problems.append(f"optim.timestep_sampling must be logit_normal or uniform, got {self.optim.timestep_sampling!r}")
        if self.model.weight_dtype not in ("float32", "bfloat16", "float16"):
            problems.append(f"model.weight_dtype must be float32, bfloat16 or float16, got {self.model.weight_dtype!r}")
        if self.model.weight_dtype != "float32" and self.optim.mixed_precision == "no":
            problems.append(f"model.weight_dtype {self.model.weight_dtype} needs optim.mixed_precision bf16 or fp16 "
                            "(the trained parts stay float32 and autocast joins them to the low-precision base)")
        if self.mode == "aligngen" and not self.model.redux:
            problems.append("aligngen mode needs model.redux (a FLUX.1-Redux folder, or 'tiny')")
        if problems:
            raise ValueError("training config: " + "; ".join(problems))


def _build(cls, values: Any, where: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"training config: {where} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"training config: unknown key(s) {unknown} in {where or 'the top level'}; "
                         f"valid keys: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        factory = fields[name].default_factory
        default = factory() if factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}".lstrip("."))
        else:
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(values: dict) -> TrainConfig:
    return _build(TrainConfig, values, "")


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a .yaml/.yml or .toml file; `overrides` (nested dict) wins over the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist (write one with: python -m refcustom.train print-config)")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        values = yaml.safe_load(text) or {}
    elif path.suffix == ".toml":
        values = tomllib.loads(text)
    else:
        raise ValueError(f"training config {path.name}: use a .yaml, .yml or .toml file")
    return config_from_dict(_merge(values, overrides or {}))


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def default_config_text(mode: str = "dreamo") -> str:
    """Every option with its documentation, as a YAML file a user can edit."""
    lines = [f"# refcustom training config ({mode} mode). Every option, with its default.", ""]

    def render(obj, indent: str):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            lines.append(f"{indent}# {f.metadata.get('doc', '')}")
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:")
                render(value, indent + "  ")
            elif f.name == "stages":
                lines.append(f"{indent}{f.name}:")
                for stage in value:
                    lines.append(f"{indent}  - " + yaml.safe_dump(dataclasses.asdict(stage), default_flow_style=True).strip())
                for sf in dataclasses.fields(StageOptions):
                    lines.append(f"{indent}  #   {sf.name}: {sf.metadata['doc']}")
            else:
                lines.append(f"{indent}{f.name}: {yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
        lines.append("")

    render(default_config(mode), "")
    return "\n".join(lines)


def default_config(mode: str = "dreamo") -> TrainConfig:
    if mode == "dreamo":
        return TrainConfig(mode="dreamo", data=DataOptions(folder="path/to/dataset"), stages=[
            {"name": "warmup", "steps": 20000, "subsets": ["single"]},
            {"name": "full", "steps": 90000},
            {"name": "quality", "steps": 3000, "subsets": ["quality"], "reference_token_drop": 0.95},
        ])
    return TrainConfig(
        mode="aligngen", model=ModelOptions(redux="path/to/FLUX.1-Redux-dev"), lora=LoraOptions(rank=16),
        data=DataOptions(folder="path/to/dataset"), stages=[{"name": "train", "steps": 15000, "learning_rate": 1e-4}],
    )
