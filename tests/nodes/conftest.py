"""Tier 2, in-process: the pack's nodes inside a real ComfyUI host (see tests/comfy_host.py).

With no host the whole directory is skipped at collection, with the reason. With one, its root goes
first on sys.path (only here: tier 1 never sees ComfyUI), ComfyUI is put in CPU mode before any
`comfy` module loads, and these fixtures are provided:

- `comfy_root`: the host's path.
- `tiny_flux`: a fresh tiny FLUX.1-dev ModelPatcher (seed 0) per test.
- `tiny_clip`: a clone of one tiny FLUX CLIP (seed 0; ComfyUI's real tokenizers) per test.
- `tiny_vae`: one tiny 16-channel TAESD-based VAE (seed 0) for the session.
- `memory_budget`: set(fraction, applies_to=FLUX models) makes the next loads of those models get
  `fraction` of their size, as on a GPU short of memory, so ComfyUI loads them partly (its low-VRAM
  path: the rest offloaded, cast per forward, LoRA deltas patched on the fly); None = ComfyUI's own
  choice (a full load on the CPU). All models are unloaded when it is set and after the test.
- `models_dir`: a fresh folder per test with the tiny official DreamO files
  (tests/fixtures/dreamo_files.py) in dreamo/ and loras/ and the tiny AlignGen file
  aligngen/aligngen_lora.safetensors (tests/fixtures/aligngen_files.py), registered as ComfyUI's
  `dreamo`, `loras` and `aligngen` model folders (and as folder_paths.models_dir) for that test only.

Every test collected here is marked `tier2`.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import pytest

from refcustom.tests.comfy_host import find_comfyui

HERE = Path(__file__).resolve().parent

COMFY_ROOT = find_comfyui()
if COMFY_ROOT is None:
    pytest.skip(
        "tier 2 skipped: no ComfyUI host (set COMFYUI_PATH, install this repo under ComfyUI/custom_nodes, "
        "or run scripts/setup_host.sh)",
        allow_module_level=True,
    )

if str(COMFY_ROOT) not in sys.path:
    sys.path.insert(0, str(COMFY_ROOT))

# Before anything imports comfy.model_management: it reads the CPU flag when it is first imported.
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
# The floor run (scripts/test.sh) points COMFYUI_PATH at another ComfyUI: make sure that is the one imported.
if not Path(comfy.cli_args.__file__).resolve().is_relative_to(COMFY_ROOT):
    raise RuntimeError(f"comfy was imported from {comfy.cli_args.__file__}, not from the host {COMFY_ROOT}: "
                       "another ComfyUI is on sys.path before the tests start")

import comfy.model_base  # noqa: E402
import comfy.model_management  # noqa: E402
import folder_paths  # noqa: E402

from refcustom.tests.fixtures import tiny_host_models  # noqa: E402
from refcustom.tests.fixtures.aligngen_files import write_tiny_aligngen_files  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.tier2)


@pytest.fixture(scope="session")
def comfy_root() -> Path:
    return COMFY_ROOT


@pytest.fixture
def tiny_flux():
    return tiny_host_models.build_tiny_flux(seed=0)


@pytest.fixture(scope="session")
def _tiny_clip_session():
    return tiny_host_models.build_tiny_clip(seed=0)


@pytest.fixture
def tiny_clip(_tiny_clip_session):
    return _tiny_clip_session.clone()


@pytest.fixture(scope="session")
def tiny_vae():
    return tiny_host_models.build_tiny_vae(seed=0)


def write_tiny_dreamo_files(models: Path) -> dict:
    """The other half of the fixtures (tests/fixtures/dreamo_files.py); a warning if it is not there yet."""
    try:
        dreamo_files = importlib.import_module("refcustom.tests.fixtures.dreamo_files")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.endswith("dreamo_files"):
            warnings.warn("tests/fixtures/dreamo_files.py not found: models_dir holds no DreamO files", stacklevel=2)
            return {}
        raise
    return dreamo_files.write_official_tiny_files(models)


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    models = tmp_path / "models"
    for sub in ("dreamo", "loras", "aligngen"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    write_tiny_dreamo_files(models)
    write_tiny_aligngen_files(models)

    registered = {
        "dreamo": ([str(models / "dreamo")], {".safetensors"}),
        "loras": ([str(models / "loras")], set(folder_paths.supported_pt_extensions)),
        "aligngen": ([str(models / "aligngen")], {".safetensors"}),
    }
    monkeypatch.setattr(folder_paths, "models_dir", str(models))
    for name, entry in registered.items():
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, entry)

    def forget_listings():
        for name in registered:
            folder_paths.filename_list_cache.pop(name, None)

    forget_listings()
    yield models
    forget_listings()


def is_diffusion_model(patcher) -> bool:
    return isinstance(patcher.model, comfy.model_base.BaseModel)


@pytest.fixture
def memory_budget(monkeypatch):
    """See the module docstring. On a CPU host load_models_gpu always loads fully; what it hands to
    LoadedModel.model_load is made small instead (shared/notes/testing-model-management.md)."""
    state = {"fraction": None, "applies_to": is_diffusion_model}
    original = comfy.model_management.LoadedModel.model_load

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        if state["fraction"] is not None and state["applies_to"](self.model):
            budget = int(state["fraction"] * self.model.model_size())
            lowvram_model_memory = max(1, budget - self.model_loaded_memory())  # 0 would mean "no limit"
        return original(self, lowvram_model_memory, force_patch_weights)

    monkeypatch.setattr(comfy.model_management.LoadedModel, "model_load", model_load)

    def set_budget(fraction, applies_to=is_diffusion_model):
        comfy.model_management.unload_all_models()
        state.update(fraction=fraction, applies_to=applies_to)

    yield set_budget
    comfy.model_management.unload_all_models()
