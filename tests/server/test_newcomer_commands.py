"""The commands a newcomer runs from the README, run as they run them (tier 2, real host, tiny models):
the quick start's headless run, the API client's --tiny mode, the device choice for real weights, and the
workflows README listing what workflows/ ships."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys

import pytest

from refcustom.tests.comfy_host import REPO_ROOT, find_comfyui, host_python

pytestmark = pytest.mark.tier2

WORKFLOWS = REPO_ROOT / "workflows"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def host():
    root = find_comfyui()
    if root is None:
        pytest.skip("no ComfyUI host")
    return root, host_python(root)


def run_script(python, *args, timeout=600):
    return subprocess.run([str(python), *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def pngs_in(folder):
    files = sorted(folder.glob("*.png"))
    assert files, f"no PNG in {folder}"
    for path in files:
        assert path.read_bytes()[:8] == PNG_MAGIC
    return files


# ---- the device: ComfyUI's own choice for real weights, --cpu only without an accelerator ----

def test_the_server_gets_cpu_only_without_an_accelerator(headless, tmp_path):
    on_cpu = headless.server_command("python", 8188, tmp_path, None)
    on_gpu = headless.server_command("python", 8188, tmp_path, "cuda")
    assert "--cpu" in on_cpu
    assert "--cpu" not in on_gpu  # ComfyUI picks the device itself, as a plain `python main.py` does
    assert [a for a in on_cpu if a != "--cpu"] == on_gpu


def test_auto_device_finds_what_the_machine_has(headless, host):
    """The probe against the machine itself: an NVIDIA GPU shows in nvidia-smi; without one, no accelerator."""
    _, python = host
    smi = shutil.which("nvidia-smi")
    has_nvidia = smi is not None and subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.startswith("GPU")
    found = headless.accelerator_of(python)
    if has_nvidia:
        assert found == "cuda"
    else:
        assert found in (None, "mps", "xpu")
        if sys.platform == "linux":
            assert found is None


def test_headless_run_with_auto_device_starts_on_this_machine(headless, host, tmp_path):
    """device='auto' must start wherever ComfyUI installs (CPU-only machines get --cpu, not a crash)."""
    root, python = host
    with headless.start_server(root, tmp_path / "base", python=python, device="auto") as server:
        assert server.device == (headless.accelerator_of(python) or "cpu")
        assert server.get_json("/system_stats")["devices"]
        assert ("--cpu" in server.log_text().splitlines()[0]) == (server.device == "cpu")


# ---- progress while a prompt runs ----

class GrowingLog:
    def __init__(self):
        self.text = ""

    def log_text(self):
        return self.text


def test_the_log_follower_shows_finished_lines_and_the_latest_progress_state(headless, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(headless.time, "monotonic", lambda: clock[0])
    server, out = GrowingLog(), io.StringIO()
    server.text = "startup line\n"  # before the prompt: not echoed
    follow = headless.LogFollower(server, out=out, interval=5.0, prefix="> ")
    server.text += "got prompt\nRequested to load Flux\n  0%|          | 0/25"
    follow()
    server.text += "\r  4%|▍         | 1/25"
    clock[0] += 1.0  # too soon for another progress state
    follow()
    server.text += "\r 40%|████      | 10/25"
    clock[0] += 6.0
    follow()
    server.text += "\r100%|██████████| 25/25\nPrompt executed in 3.2 seconds\n"
    follow()
    assert out.getvalue().splitlines() == [
        "> got prompt", "> Requested to load Flux", "> 0%|          | 0/25",
        "> 40%|████      | 10/25", "> 100%|██████████| 25/25", "> Prompt executed in 3.2 seconds"]


# ---- the quick start's run and the API client's --tiny mode ----

def test_the_quick_start_run_writes_a_png_and_shows_progress(host, tmp_path):
    root, python = host
    result = run_script(python, "scripts/headless.py", "run", "workflows/api/dreamo_ip.json", "--tiny", "--shrink",
                        "--comfyui", root, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    pngs_in(tmp_path / "out")
    assert "(cpu)" in result.stderr  # --tiny runs on the CPU
    assert re.search(r"comfyui\| .*\d+/2\b", result.stderr), result.stderr[-3000:]  # the sampler's progress echoed
    assert "Prompt executed" in result.stderr


def test_the_api_example_runs_with_one_flag_and_no_weights(host, tmp_path):
    _, python = host
    reference = WORKFLOWS / "inputs" / "refcustom_subject2.png"
    result = run_script(python, "scripts/api_example.py", "--tiny", "--workflow", "workflows/api/dreamo_ip.json",
                        "--prompt", "a toy from [ref#1] on a beach", "--reference", reference, "--seed", "5",
                        "--out", tmp_path / "outputs")
    assert result.returncode == 0, result.stderr[-3000:]
    written = pngs_in(tmp_path / "outputs")
    assert [str(p) for p in written] == result.stdout.split("\n")[-len(written) - 1:-1]  # it prints what it wrote
    assert re.search(r"\[KSampler \d+\] 2/2", result.stdout), result.stdout  # progress over the WebSocket


def test_the_api_example_without_a_server_says_so(host, tmp_path):
    _, python = host
    result = run_script(python, "scripts/api_example.py", "--server", "http://127.0.0.1:9", "--workflow",
                        "workflows/api/dreamo_ip.json", "--out", tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Connection refused" in result.stderr


# ---- the workflows README ----

def test_the_workflows_readme_lists_every_shipped_workflow_and_nothing_else():
    text = (WORKFLOWS / "README.md").read_text()
    listed = re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.MULTILINE)
    shipped_ui = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    shipped_api = sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json"))
    assert shipped_ui == shipped_api
    assert sorted(listed) == shipped_ui
    assert len(listed) == len(set(listed))
