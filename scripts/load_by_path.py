"""Load a Python module from a file path. Stdlib only: the one place that calls `spec_from_file_location`.

Its callers mostly run before the package `refcustom` can be imported, or outside it:

- tests/conftest.py and bench/random_flux.py register the repository root as the package `refcustom`
  (the checkout's folder is rarely named so, and it need not be installed);
- scripts/headless.py writes the tiny model files in a child Python that does the same;
- the test server loads its fixture nodes (tests/fixture_pack, tests/fixtures/fixture_nodes.py) from a
  custom-node folder outside any package;
- files of scripts/ are run as commands and loaded by path (tests/server/scripts.py), never as a package.

So this file imports nothing of ours and lives in scripts/, next to the commands, and not inside the
package: it is the thing that makes the package importable and cannot load itself. Callers reach it by
its path; `runpy.run_path` runs it without touching sys.path or sys.modules:

    load_module = runpy.run_path(str(REPO_ROOT / "scripts" / "load_by_path.py"))["load_module"]

Modules of the registered package (the test modules) import it like any submodule:
`from refcustom.scripts.load_by_path import load_module` (scripts/ has no `__init__.py`, so it is a
namespace portion of `refcustom`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType


def load_module(name: str, path: str | os.PathLike, *, package_dir: str | os.PathLike | None = None,
                register: bool = True) -> ModuleType:
    """Execute the Python file `path` as a new module named `name` and return it.

    package_dir: load it as a package whose submodules live there (`name.sub` is package_dir/sub.py),
    as a package's `__init__.py` is loaded.
    register: put the module in `sys.modules[name]` before it runs (what its relative imports, its
    dataclasses and `import name` elsewhere need). Any earlier module of that name is replaced; if running
    the file fails, `sys.modules` is put back as it was and the error propagates. With register=False the
    module runs outside sys.modules and nothing global changes; every call makes a new module either way.

    Raises FileNotFoundError when `path` is not a file (callers may treat a missing file as optional).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cannot load module {name!r}: {path} is not a file")
    package = {} if package_dir is None else {"submodule_search_locations": [os.fspath(package_dir)]}
    spec = importlib.util.spec_from_file_location(name, path, **package)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load module {name!r} from {path}: not a Python source file", name=name,
                          path=str(path))
    module = importlib.util.module_from_spec(spec)
    if not register:
        spec.loader.exec_module(module)
        return module
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if sys.modules.get(name) is module:
            if previous is None:
                del sys.modules[name]
            else:
                sys.modules[name] = previous
        raise
    return module
