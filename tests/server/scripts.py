"""Load a file of scripts/ as a module (scripts/ is not a package: its files are run as commands)."""

from __future__ import annotations

import importlib.util
import sys

from refcustom.tests.comfy_host import REPO_ROOT


def load_script(file_name: str):
    """scripts/<file_name> as the module `refcustom_<stem>`, loaded once per process."""
    name = "refcustom_" + file_name.removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / file_name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
