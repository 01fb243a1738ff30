"""Shared test setup: `import refcustom` resolves to this checkout; the `tier2` marker.

The repository root is itself the package `refcustom` (ComfyUI imports the same folder from
custom_nodes/). When it is not installed, or an installed copy is another checkout, the root is
registered under that name from its `__init__.py`, which imports nothing from ComfyUI at module level.
The repository's parent folder is not put on sys.path: the checkout's folder is rarely named
`refcustom`, and its siblings must not become importable by accident.

Tier 1 (tests/model, tests/train) never imports ComfyUI. Tier 2 (tests/nodes in-process, tests/server
against a headless server) needs a ComfyUI host; see tests/comfy_host.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import runpy
import sys
import types
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "refcustom"
TIER1_DIRS = tuple(REPO_ROOT / "tests" / name for name in ("model", "train"))


def _points_here(origin: str | None, locations) -> bool:
    paths = [origin] if origin else []
    paths += list(locations or [])
    return any(Path(p).resolve() in (REPO_ROOT, REPO_ROOT / "__init__.py") for p in paths if p)


def register_package() -> types.ModuleType:
    """Make `import refcustom` (and its submodules, `refcustom.tests` included) load this checkout."""
    module = sys.modules.get(PACKAGE)
    if module is not None and _points_here(getattr(module, "__file__", None), getattr(module, "__path__", None)):
        return module
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and _points_here(spec.origin, spec.submodule_search_locations):
        return importlib.import_module(PACKAGE)
    init = REPO_ROOT / "__init__.py"
    if init.is_file():
        # By path: this runs before `refcustom` (and so refcustom.scripts) can be imported.
        load_module = runpy.run_path(str(REPO_ROOT / "scripts" / "load_by_path.py"))["load_module"]
        module = load_module(PACKAGE, init, package_dir=REPO_ROOT)
    else:  # the package's __init__.py is being written: still let tests import its submodules
        module = types.ModuleType(PACKAGE)
        module.__path__ = [str(REPO_ROOT)]
        sys.modules[PACKAGE] = module
    return module


register_package()


def _is_comfyui_root(entry: str) -> bool:
    return bool(entry) and os.path.isfile(os.path.join(entry, "main.py")) and os.path.isdir(os.path.join(entry, "comfy"))


@contextlib.contextmanager
def comfyui_hidden():
    """ComfyUI off sys.path and out of sys.modules for the duration (restored afterwards).

    tests/nodes/conftest.py puts ComfyUI's root on sys.path when it is collected, and a single pytest
    run collects every directory before running any test; tier-1 modules are imported and run inside
    this context, so an `import comfy` (or folder_paths, nodes, ...) there fails as it would without a host.
    """
    roots = [entry for entry in sys.path if _is_comfyui_root(entry)]
    if not roots:
        yield
        return
    prefixes = tuple(os.path.join(os.path.abspath(r), "") for r in roots)
    # Never hide our own modules, nor installed packages (a host's .venv lives inside its root).
    keep = tuple(os.path.join(os.path.abspath(p), "") for p in {str(REPO_ROOT), sys.prefix, sys.base_prefix})
    hidden_modules = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        try:  # namespace packages (ComfyUI's `comfy` has no __init__.py) only have __path__
            locations = [file] if file else list(getattr(module, "__path__", None) or [])
        except Exception:
            continue
        for location in locations:
            location = os.path.join(os.path.abspath(location), "")
            if location.startswith(prefixes) and not location.startswith(keep) and not os.path.realpath(location).startswith(keep):
                hidden_modules[name] = sys.modules.pop(name)
                break
    saved_path = list(sys.path)
    sys.path[:] = [entry for entry in sys.path if entry not in roots]
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path[:] = saved_path
        sys.modules.update(hidden_modules)


def _in_tier1(path) -> bool:
    path = Path(str(path)).resolve()
    return any(path == d or d in path.parents for d in TIER1_DIRS)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    if isinstance(collector, pytest.Module) and _in_tier1(collector.path):
        with comfyui_hidden():
            return (yield)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _in_tier1(item.path):
        with comfyui_hidden():
            return (yield)
    return (yield)


def pytest_configure(config):
    from refcustom.tests.tier_report import TierReport

    config.pluginmanager.register(TierReport(), "refcustom-tier-report")
    config.addinivalue_line(
        "markers", "tier2: needs a real ComfyUI host (in-process node tests or a headless server)"
    )
