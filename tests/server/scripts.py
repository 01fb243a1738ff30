"""Load a file of scripts/ as a module (scripts/ is not a package: its files are run as commands)."""

from __future__ import annotations

import sys

from refcustom.scripts.load_by_path import load_module
from refcustom.tests.comfy_host import REPO_ROOT


def load_script(file_name: str):
    """scripts/<file_name> as the module `refcustom_<stem>`, loaded once per process."""
    name = "refcustom_" + file_name.removesuffix(".py")
    if name not in sys.modules:
        load_module(name, REPO_ROOT / "scripts" / file_name)
    return sys.modules[name]
