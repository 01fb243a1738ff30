"""Checkpoint state in formats that cannot run code: tensors in safetensors, everything else in JSON.

Run folders are shared (a team drive, a copied `runs/` folder, a download), and a pickle runs code
when it is loaded: `torch.load(..., weights_only=False)` on a crafted `optimizer.pt` would execute
whatever its author wrote. So nothing here unpickles. The optimizer's state_dict is split into its
tensors (`state.<param_id>.<name>` in `optimizer.safetensors`) and the rest (param_groups and any
non-tensor state values, in `optimizer.json`); RNG states are uint8 tensors (torch CPU, CUDA per
device, the trainer's generator) plus JSON lists (Python `random`, NumPy); the GradScaler state is
a handful of numbers. A folder in the old pickle format is refused, never loaded.

Resume also checks the config: `config_differences` lists the options that differ from the ones the
run was started with, so a changed dataset or learning rate cannot silently continue a run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")

# Options that do not change what is trained: where the run and its caches live, and logging,
# checkpoint, sample and export settings. They may differ freely between a run and its resume.
UNCOMPARED = ("output_dir", "model.tiny_dir", "data.cache", "data.cache_dir", "data.num_workers", "run")


# -- files -----------------------------------------------------------------------------------------

def refuse_pickles(folder: Path):
    """Raise if a checkpoint folder holds pickle files (the old format); they are never loaded."""
    found = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if found:
        raise ValueError(
            f"checkpoint {folder} holds pickle files {found} (the old checkpoint format, or files put there by "
            "someone else); they are not loaded because unpickling can run arbitrary code. Start a new run (another "
            "output_dir, or delete this checkpoints folder), or convert the checkpoint by hand with code you trust "
            "to optimizer.safetensors/optimizer.json and rng-<rank>.safetensors/rng-<rank>.json"
        )


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"checkpoint file {path} is missing or not a valid JSON file ({error}); it is damaged or was not "
                         "written by this trainer: delete this checkpoint folder to resume from an earlier one, "
                         "or start a new run") from error


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise ValueError(f"checkpoint file {path} is missing or not a valid safetensors file ({error}); it is "
                         "damaged or was not written by this trainer: delete this checkpoint folder to resume from "
                         "an earlier one, or start a new run") from error


def write_json(path: Path, value):
    path.write_text(json.dumps(value, indent=1))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]):
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


# -- optimizer -------------------------------------------------------------------------------------

def split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """`optimizer.state_dict()` -> (tensors keyed `state.<param_id>.<name>`, JSON-ready rest)."""
    tensors, plain = {}, {}
    for param_id, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value
            else:
                plain.setdefault(str(param_id), {})[name] = _json_value(value, f"state[{param_id}][{name!r}]")
    groups = [{k: _json_value(v, f"param_groups[{i}][{k!r}]") for k, v in group.items()}
              for i, group in enumerate(state_dict["param_groups"])]
    return tensors, {"param_groups": groups, "state": plain}


def join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """The inverse of `split_optimizer_state`: a dict `optimizer.load_state_dict` takes."""
    state: dict[int, dict] = {int(pid): dict(values) for pid, values in rest["state"].items()}
    for key, tensor in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = tensor
    return {"state": state, "param_groups": rest["param_groups"]}


def save_optimizer(folder: Path, state_dict: dict):
    tensors, rest = split_optimizer_state(state_dict)
    write_tensors(folder / "optimizer.safetensors", tensors)
    write_json(folder / "optimizer.json", rest)


def load_optimizer(folder: Path) -> dict:
    return join_optimizer_state(read_tensors(folder / "optimizer.safetensors"), read_json(folder / "optimizer.json"))


def _json_value(value, where: str):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v, where) for v in value]
    raise TypeError(f"optimizer state {where} is a {type(value).__name__}; the checkpoint writer takes tensors, "
                    "numbers, strings and lists (extend train/checkpoint_state.py for this optimizer)")


# -- random number generators ----------------------------------------------------------------------

def rng_state(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict]:
    """This process's RNG states: (uint8 tensors, JSON-ready Python and NumPy states)."""
    import numpy as np

    tensors = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [version, list(internal), gauss],
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, plain


def set_rng_state(generator: torch.Generator, tensors: dict[str, torch.Tensor], plain: dict):
    import numpy as np

    generator.set_state(tensors["generator"])
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"cuda.{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"cuda.{i}"], i)
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_rng(folder: Path, rank: int, generator: torch.Generator):
    tensors, plain = rng_state(generator)
    write_tensors(folder / f"rng-{rank}.safetensors", tensors)
    write_json(folder / f"rng-{rank}.json", plain)


def load_rng(folder: Path, rank: int, generator: torch.Generator):
    set_rng_state(generator, read_tensors(folder / f"rng-{rank}.safetensors"), read_json(folder / f"rng-{rank}.json"))


# -- GradScaler (fp16) -----------------------------------------------------------------------------

def scaler_state(scaler) -> dict | None:
    """A GradScaler's state_dict (scale, growth tracker, factors) as JSON numbers; None without one."""
    if scaler is None:
        return None
    return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in scaler.state_dict().items()}


def set_scaler_state(scaler, state: dict | None):
    if scaler is not None and state:
        scaler.load_state_dict(state)


# -- config ----------------------------------------------------------------------------------------

def flatten(values, prefix: str = "") -> dict[str, object]:
    """Nested dicts and lists -> {"optim.learning_rate": ..., "stages[1].steps": ...}."""
    if isinstance(values, dict):
        out = {}
        for key, value in values.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
        return out
    if isinstance(values, (list, tuple)) and any(isinstance(v, dict) for v in values):
        out = {f"{prefix}.length": len(values)}
        for i, value in enumerate(values):
            out.update(flatten(value, f"{prefix}[{i}]"))
        return out
    return {prefix: list(values) if isinstance(values, tuple) else values}


def _covered(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") or key.startswith(p + "[") for p in prefixes)


def config_differences(saved: dict, current: dict, allowed: bool | list[str] = False) -> list[str]:
    """Options (dotted paths) that differ between the saved and the current config, as 'key: old -> new'.

    `UNCOMPARED` options and those `allowed` names (a key or a parent such as `stages` or `optim`;
    True for all) are left out.
    """
    if allowed is True:
        return []
    old, new = flatten(saved), flatten(current)
    skip = UNCOMPARED + tuple(allowed or ())
    show = lambda values, key: repr(values[key]) if key in values else "(absent)"  # noqa: E731
    return [f"{key}: {show(old, key)} -> {show(new, key)}" for key in sorted(old.keys() | new.keys())
            if not _covered(key, skip) and (key in old, old.get(key)) != (key in new, new.get(key))]
