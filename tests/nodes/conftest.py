"""Tier 2, in-process: the pack's nodes inside a real ComfyUI host (see tests/comfy_host.py).

With no host the whole directory is skipped at collection, with the reason. With one, its root goes
first on sys.path (only here: tier 1 never sees ComfyUI), ComfyUI is put in CPU mode before any
`comfy` module loads, and these fixtures are provided:

- `comfy_root`: the host's path.
- `tiny_flux`: a fresh tiny FLUX.1-dev ModelPatcher (seed 0) per test.
- `tiny_clip`: a clone of one tiny FLUX CLIP (seed 0; ComfyUI's real tokenizers) per test.
- `tiny_vae`: one tiny 16-channel TAESD-based VAE (seed 0) for the session.
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
