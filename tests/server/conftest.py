"""Tier 2 against a real headless ComfyUI server (scripts/headless.py); skipped without a host.

`comfy_server` (session): one server on a free loopback port with a temporary base directory holding
custom_nodes/refcustom (a link to this checkout), models/ with the tiny official DreamO files
(tests/fixtures/dreamo_files.py), the tiny AlignGen file aligngen/aligngen_lora.safetensors
(tests/fixtures/aligngen_files.py) and a copy of dreamo/dreamo.safetensors in loras/ (where DreamO's
loader also looks, so Load AlignGen lists it: the wrong-file error case), input/ with
workflows/inputs/, the test-only fixture pack tests/fixture_pack linked next to the pack (tiny model loaders: FLUX with UNETLoader's
weight_dtype and an instance number, CLIP, VAE, Redux, SigLIP; and the sampling probe) and every
RuntimeWarning printed (a NaN cast to uint8 in SaveImage shows
up in the log each time). It is stopped at the end of the session whatever happens.

`headless`: the scripts/headless.py module. Every test here that uses `comfy_server` is marked `tier2`
(and skipped without a host); the graph-helper tests need no host and run in tier 1 as well. Nothing
here imports ComfyUI: the server is another process, run with the host's own Python.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import warnings
from pathlib import Path

import pytest

from refcustom.tests.comfy_host import find_comfyui, host_python

from .scripts import load_script

HERE = Path(__file__).resolve().parent

COMFY_ROOT = find_comfyui()
NO_HOST = "tier 2 server tests skipped: no ComfyUI host (set COMFYUI_PATH or run scripts/setup_host.sh)"
DREAMO_FILE_IN_LORAS = "dreamo.safetensors"  # models/loras/<this>: a DreamO file where Load AlignGen looks too


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents and "comfy_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.tier2)


@pytest.fixture(scope="session")
def headless():
    return load_script("headless.py")


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, headless):
    if COMFY_ROOT is None:
        pytest.skip(NO_HOST)
    base_dir = tmp_path_factory.mktemp("comfy-server")
    try:
        dreamo_files = importlib.import_module("refcustom.tests.fixtures.dreamo_files")
    except ModuleNotFoundError as exc:
        if not (exc.name or "").endswith("dreamo_files"):
            raise
        warnings.warn("tests/fixtures/dreamo_files.py not found: the server has no DreamO files", stacklevel=1)
    else:
        written = dreamo_files.write_official_tiny_files(base_dir / "models")
        dreamo = written.get("dreamo/dreamo.safetensors")
        if dreamo is not None:
            shutil.copy2(dreamo, base_dir / "models" / "loras" / DREAMO_FILE_IN_LORAS)
    from refcustom.tests.fixtures.aligngen_files import write_tiny_aligngen_files

    write_tiny_aligngen_files(base_dir / "models")
    server = headless.start_server(
        COMFY_ROOT, base_dir, python=host_python(COMFY_ROOT),
        extra_env={headless.FIXTURES_ENV: "1", "PYTHONWARNINGS": "always::RuntimeWarning"},
    )
    try:
        yield server
    finally:
        server.stop()
