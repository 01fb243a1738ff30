"""What a user gets from this repository outside a git checkout: the registry package, the `refcustom`
package in ComfyUI's Python, and a working tree that git keeps clean of outputs (tier 2: the host's venv
holds comfy-cli and the editable install that scripts/setup_host.sh makes).

- The registry package is built by the registry's own packer, `comfy node pack` (comfy-cli; it zips the
  git-tracked files minus `.comfyignore`), from a clean copy of this working tree: the tracked files plus
  the untracked ones git does not ignore, as a commit of it would hold. Its file list is checked against
  what ComfyUI loads and what the shipped README tells a user to run; it is unpacked into
  `custom_nodes/refcustom` form and loaded with ComfyUI's own custom-node loader, which must register the
  same nodes as this checkout. `comfy node validate` (the registry's publishing checks) passes.
- `<host>/.venv/bin/python -m refcustom.train` runs from any folder and imports this checkout.
- Every output folder the README and the scripts name is ignored by git (`git check-ignore`).

comfy-cli runs with telemetry off (DO_NOT_TRACK, `--skip-prompt`), its config in a temporary HOME, no
stdin and a timeout, so it neither asks nor talks to the network.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from refcustom.tests.comfy_host import REPO_ROOT, find_comfyui, host_python

pytestmark = pytest.mark.tier2

COMFY_ROOT = find_comfyui()
NO_HOST = "tier 2 packaging tests skipped: no ComfyUI host (set COMFYUI_PATH or run scripts/setup_host.sh)"
TIMEOUT = 300

# The package: what ComfyUI loads (the root __init__.py, nodes/, model/), the training sidecar the README
# documents (`python -m refcustom.train`), the workflows (templates, thumbnails, API graphs, input images,
# example outputs), the metadata, the icon, and the scripts a user of an installed pack runs (the weight
# downloader with its table and the loader it reads it with, the headless API client).
SHIPPED_DIRS = ("nodes", "model", "train", "workflows")
SHIPPED_FILES = ("__init__.py", "README.md", "LICENSE", "pyproject.toml", "requirements.txt", "icon.png")
SHIPPED_SCRIPTS = ("scripts/fetch_weights.py", "scripts/weights_table.py", "scripts/load_by_path.py",
                   "scripts/api_example.py")
NEVER_SHIPPED = ("tests/", "bench/", ".ci/")
ICON = "icon.png"
PACKAGE_BUDGET = 2_000_000  # bytes of node.zip; 0.92 MB when this test was written


def ships(path: str) -> bool:
    top = path.split("/", 1)[0]
    return (top in SHIPPED_DIRS and "/" in path) or path in SHIPPED_FILES or path in SHIPPED_SCRIPTS


def host_env(home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(DO_NOT_TRACK="1", COMFY_NO_TELEMETRY="1")
    if home is not None:
        env["HOME"] = str(home)
    return env


def run(cmd, cwd, env=None, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or host_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def report(request, line: str):
    """Print `line` in the test run's output, past output capture (also under -q)."""
    plugins = request.config.pluginmanager
    capture, reporter = plugins.get_plugin("capturemanager"), plugins.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.fixture(scope="module")
def python() -> Path:
    if COMFY_ROOT is None:
        pytest.skip(NO_HOST)
    return host_python(COMFY_ROOT)


@pytest.fixture(scope="module")
def comfy(python, tmp_path_factory):
    """`comfy <args>` from the host's venv, non-interactive and without telemetry."""
    found = run([python, "-c", "import comfy_cli"], cwd=REPO_ROOT)
    if found.returncode != 0:
        pytest.skip(f"comfy-cli is not installed in {python}: run scripts/setup_host.sh (section 3b installs it)")
    home = tmp_path_factory.mktemp("comfy-cli-home")

    def comfy_cli(*args, cwd):
        result = run([python, "-m", "comfy_cli", "--skip-prompt", "--no-json", *args], cwd=cwd, env=host_env(home))
        return result.returncode, result.stdout + result.stderr

    return comfy_cli


def working_tree_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore: what a commit of this working tree holds."""
    out = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return sorted({p for p in out.split("\0") if p and (REPO_ROOT / p).is_file()})


@pytest.fixture(scope="module")
def package(comfy, tmp_path_factory, request):
    """(files of the clean copy, node.zip's path, its names) for `comfy node pack` run on a clean copy."""
    files = working_tree_files()
    copy = tmp_path_factory.mktemp("pack") / "refcustom"
    for rel in files:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, copy / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A", "-f"]):
        subprocess.run(cmd, cwd=copy, capture_output=True, text=True, timeout=60, check=True)
    rc, out = comfy("node", "pack", cwd=copy)
    assert rc == 0, f"comfy node pack failed ({rc}):\n{out}"
    assert "Zipping all files" not in out, f"comfy node pack did not see the git repository:\n{out}"
    zip_path = copy / "node.zip"
    with zipfile.ZipFile(zip_path) as archive:
        names = sorted(n for n in archive.namelist() if not n.endswith("/"))
    report(request, f"registry package (comfy node pack): {zip_path.stat().st_size:,} bytes, {len(names)} files "
                    f"(of {len(files)} in the working tree)")
    return files, zip_path, names


def test_comfy_node_validate_passes(comfy):
    rc, out = comfy("node", "validate", cwd=REPO_ROOT)
    assert rc == 0, f"comfy node validate failed ({rc}):\n{out}"
    assert "All validation checks passed" in out, f"validate printed warnings:\n{out}"


def test_the_package_holds_what_comfyui_loads_and_no_dev_files(package):
    files, zip_path, names = package
    expected = [f for f in files if ships(f)]
    missing = sorted(set(expected) - set(names))
    extra = sorted(set(names) - set(expected))
    assert not missing, f"left out of the registry package (check .comfyignore): {missing}"
    assert not extra, (f"in the registry package but not meant to ship: {extra}; add them to .comfyignore, or to "
                       "SHIPPED_* here if users need them")
    for prefix in NEVER_SHIPPED:
        assert not [n for n in names if n.startswith(prefix)], f"{prefix} is in the package"
    for pattern in ("nodes/*.py", "model/*.py", "train/*.py", "train/configs/*.yaml", "workflows/*.json",
                    "workflows/api/*.json", "workflows/inputs/*.png"):
        assert any(PurePosixPath(n).match(pattern) for n in names), f"no {pattern} in the package"
    for name in ("__init__.py", "pyproject.toml", "README.md", "requirements.txt", ICON):
        assert name in names
    assert zip_path.stat().st_size < PACKAGE_BUDGET, (
        f"node.zip is {zip_path.stat().st_size:,} bytes (budget {PACKAGE_BUDGET:,}): something large ships")


def test_the_icon_is_small_square_and_named_by_the_registry_metadata(package):
    import tomllib
    from PIL import Image

    _, zip_path, _ = package
    with zipfile.ZipFile(zip_path) as archive:
        data = archive.read(ICON)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.width == image.height <= 400, (image.format, image.size)
    assert len(data) < 30_000, f"{ICON} is {len(data):,} bytes"
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    icon_url = meta["tool"]["comfy"]["Icon"]
    repository = meta["project"]["urls"]["Repository"]
    owner_repo = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)/?", repository)
    assert owner_repo, f"[project.urls] Repository is not a GitHub URL: {repository}"
    # The registry takes a URL (SVG/PNG/JPG/GIF, at most 800x400): the raw file in the repository.
    assert re.fullmatch(rf"https://raw\.githubusercontent\.com/{re.escape(owner_repo[1])}/[^/]+/{ICON}", icon_url), (
        f"[tool.comfy] Icon = {icon_url!r} is not {ICON} in {repository}")


def test_the_unpacked_package_loads_in_comfyui_with_the_checkouts_nodes(package, python, tmp_path):
    _, zip_path, _ = package
    unpacked = tmp_path / "custom_nodes" / "refcustom"
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(unpacked)
    script = """
import asyncio, importlib, sys
comfy_root, checkout, packed = sys.argv[1:4]
sys.path.insert(0, comfy_root)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import nodes

def load(path):
    before = set(nodes.NODE_CLASS_MAPPINGS)
    ok = asyncio.run(nodes.load_custom_node(path))
    ids = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
    for node_id in ids:
        del nodes.NODE_CLASS_MAPPINGS[node_id]
    return ok, ids

ok_checkout, checkout_ids = load(checkout)
ok_packed, packed_ids = load(packed)
assert ok_checkout and checkout_ids, ("the checkout did not load", ok_checkout, checkout_ids)
assert ok_packed, "ComfyUI could not load the unpacked package (traceback above)"
assert packed_ids == checkout_ids, ("nodes differ", sorted(set(checkout_ids) ^ set(packed_ids)))
package_name = packed.replace(".", "_x_")
for module in ("train.cli", "train.export", "model"):
    importlib.import_module(package_name + "." + module)
print("nodes:", len(packed_ids))
"""
    result = run([python, "-c", script, COMFY_ROOT, REPO_ROOT, unpacked], cwd=COMFY_ROOT)
    assert result.returncode == 0, f"loading the package in ComfyUI failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    assert "nodes:" in result.stdout


def test_the_shipped_scripts_run_from_the_unpacked_package(package, python, tmp_path):
    _, zip_path, names = package
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp_path)
    scripts = [n for n in names if n.startswith("scripts/")]
    assert scripts
    for script in scripts:
        result = run([python, script, "--help"], cwd=tmp_path, timeout=120)
        assert result.returncode == 0, f"{script} --help fails in the package (a file it needs is not shipped?):\n" \
                                       f"{result.stdout}\n{result.stderr[-4000:]}"


def test_training_runs_from_the_hosts_python_in_any_folder(python, tmp_path):
    where = run([python, "-c", "import refcustom; print(refcustom.__file__)"], cwd=tmp_path)
    assert where.returncode == 0, f"`import refcustom` fails in {python} (run scripts/setup_host.sh):\n{where.stderr}"
    assert Path(where.stdout.strip()).resolve() == (REPO_ROOT / "__init__.py").resolve(), (
        f"{python} imports refcustom from {where.stdout.strip()}, not this checkout: run scripts/setup_host.sh")
    for cmd in ([python, "-m", "refcustom.train", "--help"], [Path(python).parent / "refcustom-train", "--help"]):
        result = run(cmd, cwd=tmp_path, timeout=120)
        assert result.returncode == 0 and "synthetic-data" in result.stdout, (
            f"{' '.join(map(str, cmd))} fails outside the checkout:\n{result.stdout}\n{result.stderr[-4000:]}")


def documented_outputs() -> list[str]:
    """Output folders the README and the scripts name: `--out <folder>` examples, the training configs'
    output_dir and the trainer's default, the test output, `comfy node pack`'s node.zip and the egg-info an
    editable install writes."""
    from refcustom.train.config import TrainConfig

    texts = [REPO_ROOT / "README.md", REPO_ROOT / "workflows" / "README.md",
             *sorted((REPO_ROOT / "scripts").glob("*.py")), *sorted((REPO_ROOT / "scripts").glob("*.sh"))]
    found = set()
    for path in texts:
        found.update(m.rstrip("/") for m in re.findall(r"--out[ =]([a-z][\w.-]*(?:/[\w.-]+)*/?)", path.read_text()))
    for config in sorted((REPO_ROOT / "train" / "configs").glob("*.yaml")):
        found.update(re.findall(r"^output_dir:\s*(\S+)", config.read_text(), flags=re.M))
    found.add(TrainConfig.__dataclass_fields__["output_dir"].default)
    return sorted(found)


def test_every_documented_output_is_ignored_by_git():
    outputs = documented_outputs()
    assert {"out", "outputs", "runs/shapes", "runs/refcustom"} <= set(outputs), outputs
    candidates = [f"{folder}/x.png" for folder in outputs] + [
        "out/test-output/browser/canvas.png", "runs/dreamo-tiny/checkpoints/step-00000010/trainable.safetensors",
        "runs/refcustom/dreamo_lora.safetensors", "node.zip", "refcustom.egg-info/PKG-INFO", "dreamo_lora.safetensors"]
    not_ignored = []
    for path in candidates:
        check = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", "--no-index", path],
                               capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            not_ignored.append(path)
    assert not not_ignored, f"not ignored by .gitignore: {not_ignored}"
    tracked = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "--", *outputs, "node.zip"],
                             capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert not tracked, f"outputs are tracked: {tracked}"
