"""The CI tooling that decides whether a run counts: the tier report, the fail-closed gate and the host
archive install (tier 2: it runs the real scripts, as .ci/run does).

The expectations come from what CI must mean, not from the scripts' code: a run where a tier did not
pass tests is a failure that names the fix; an archive that is not ComfyUI never leaves a half-made host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from refcustom.tests.comfy_host import REPO_ROOT

pytestmark = pytest.mark.tier2

GATE = REPO_ROOT / "scripts" / "ci_gate.py"
ARCHIVE_LIB = REPO_ROOT / "scripts" / "lib" / "host_archive.sh"


def tier(passed=1, skipped=0, reasons=()):
    return {"passed": passed, "skipped": skipped, "failed": 0, "seconds": 1.0, "skip_reasons": list(reasons)}


def full_main():
    return {"comfyui_version": "0.8.0",
            "tiers": {"tier1": tier(250), "tier2-nodes": tier(230), "tier2-server": tier(60), "browser": tier(27)}}


def full_floor():
    return {"comfyui_version": "0.3.60", "tiers": {"tier2-nodes": tier(230)}}


def gate(tmp_path, main, floor):
    paths = []
    run = tmp_path / f"gate{len(list(tmp_path.glob('gate*')))}"  # a fresh folder per call: no stale report
    run.mkdir()
    for name, report in (("main", main), ("floor", floor)):
        path = run / f"{name}.json"
        if report is not None:
            path.write_text(json.dumps(report))
        paths.append(str(path))
    result = subprocess.run([sys.executable, str(GATE), *paths], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout


def test_the_gate_passes_only_when_every_tier_ran(tmp_path):
    rc, out = gate(tmp_path, full_main(), full_floor())
    assert rc == 0, out
    assert "every tier ran" in out


def test_a_tier_one_only_run_fails_and_says_how_to_get_a_host(tmp_path):
    tier1_only = {"comfyui_version": None, "tiers": {"tier1": tier(250)}}
    rc, out = gate(tmp_path, tier1_only, None)
    assert rc == 1
    assert "tier 2 did not run" in out and "COMFYUI_ARCHIVE" in out
    assert "floor" in out and "COMFYUI_FLOOR_ARCHIVE" in out


@pytest.mark.parametrize("tier_name, label", [("tier2-nodes", "in-process nodes"), ("tier2-server", "headless server"),
                                               ("browser", "browser")])
def test_a_skipped_tier_two_test_counts_as_not_run(tmp_path, tier_name, label):
    main = full_main()
    main["tiers"][tier_name] = tier(5, 1, ["tests/x.py::test_y: no chromium"])
    rc, out = gate(tmp_path, main, full_floor())
    assert rc == 1
    assert label in out and "1 test(s) skipped" in out and "no chromium" in out


def test_a_missing_tier_or_the_wrong_host_version_fails(tmp_path):
    no_browser = full_main()
    del no_browser["tiers"]["browser"]
    rc, out = gate(tmp_path, no_browser, full_floor())
    assert rc == 1 and "the browser test did not run" in out and "REFCUSTOM_CHROMIUM" in out

    floor_on_main = full_floor()
    floor_on_main["comfyui_version"] = "0.8.0"  # COMFYUI_PATH pointing at the main host by mistake
    rc, out = gate(tmp_path, full_main(), floor_on_main)
    assert rc == 1 and "ran on ComfyUI 0.8.0, not 0.3.60" in out

    rc, out = gate(tmp_path, None, full_floor())
    assert rc == 1 and "tier 1 did not run" in out


def test_a_real_tier_one_report_does_not_pass_the_gate(tmp_path):
    """The tier report pytest writes (tests/tier_report.py) read by the gate: a tier-1-only run on a machine
    that has a host still fails, because tier 2 passed nothing."""
    report = tmp_path / "main.json"
    env = {**os.environ, "REFCUSTOM_TIER_REPORT": str(report)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                             "tests/model/test_guidance.py"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]
    written = json.loads(report.read_text())
    assert written["tiers"]["tier1"]["passed"] >= 10 and written["tiers"]["tier1"]["skipped"] == 0
    assert "tier2-nodes" not in written["tiers"]
    assert "tier1 " in result.stdout and "passed" in result.stdout  # the per-tier line is printed
    rc, out = gate(tmp_path, written, full_floor())
    assert rc == 1 and "tier 2 (in-process nodes) did not run: no test of it passed" in out


# ---- host archives (scripts/lib/host_archive.sh) ----

def make_archive(path, top: str, files: dict[str, str]):
    """A .tar.gz holding `files` under the folder `top` ('' = at the archive root)."""
    source = path.parent / f"src_{path.stem}"
    for name, text in files.items():
        target = source / top / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    with tarfile.open(path, "w:gz") as archive:
        for entry in sorted((source / top).iterdir() if top else source.iterdir()):
            archive.add(entry, arcname=f"{top}/{entry.name}" if top else entry.name)
    return path


COMFY_FILES = {"main.py": "", "comfy/__init__.py": "", "comfyui_version.py": '__version__ = "0.3.59"\n'}


def extract(archive, target):
    script = f'. "{ARCHIVE_LIB}"; extract_comfyui_archive "$1" "$2" && comfyui_version_of "$2"'
    return subprocess.run(["bash", "-c", script, "extract", str(archive), str(target)], capture_output=True,
                          text=True, timeout=60)


def test_an_archive_of_comfyui_installs_and_reports_its_version(tmp_path):
    archive = make_archive(tmp_path / "good.tar.gz", "ComfyUI", COMFY_FILES)
    result = extract(archive, tmp_path / "host")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.3.59"
    assert (tmp_path / "host" / "main.py").is_file() and (tmp_path / "host" / "comfy").is_dir()
    assert not list(tmp_path.glob(".comfyui-unpack.*"))  # no staging folder left behind


@pytest.mark.parametrize("case", ["not ComfyUI", "not a tarball", "missing"])
def test_an_unusable_archive_fails_clearly_and_leaves_nothing(tmp_path, case):
    if case == "not ComfyUI":
        archive = make_archive(tmp_path / "other.tar.gz", "stable-diffusion-webui", {"webui.py": ""})
        expected = "holds no ComfyUI source folder"
    elif case == "not a tarball":
        archive = tmp_path / "broken.tar.gz"
        archive.write_text("this is not gzip")
        expected = "is not a readable .tar.gz"
    else:
        archive = tmp_path / "absent.tar.gz"
        expected = "does not exist"
    result = extract(archive, tmp_path / "host")
    assert result.returncode != 0
    assert expected in result.stderr
    assert not (tmp_path / "host").exists()
    assert not list(tmp_path.glob(".comfyui-unpack.*"))


def test_the_floor_setup_refuses_a_host_that_is_not_the_floor_version(tmp_path):
    archive = make_archive(tmp_path / "floor.tar.gz", "ComfyUI", COMFY_FILES)  # says 0.3.59
    env = {**os.environ, "COMFYUI_FLOOR_PATH": str(tmp_path / "floor"), "COMFYUI_FLOOR_ARCHIVE": str(archive)}
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup_floor_host.sh")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert "holds ComfyUI 0.3.59, not the floor 0.3.60" in result.stderr

    env.pop("COMFYUI_FLOOR_ARCHIVE")
    env["COMFYUI_FLOOR_PATH"] = str(tmp_path / "nowhere")
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup_floor_host.sh")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no COMFYUI_FLOOR_ARCHIVE" in result.stderr
