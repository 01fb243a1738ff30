"""bench/gpu_suite.py as CI runs it (tier 2: it builds ComfyUI's own FLUX, so it needs the host): the small CPU
preset, one round, --json. A smoke run, not a timing: every row must be there with finite positive figures and
named in the printed table; how fast anything is goes unchecked."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from refcustom.tests.comfy_host import REPO_ROOT, find_comfyui, host_python

pytestmark = pytest.mark.tier2

# The rows issue 18 asks for (the dense row may also bring a gathered and a plain batch-4 row at a smaller size).
ROWS = ("plain", "dreamo_1ref", "dreamo_3ref", "dualcfg_guider", "normalized_guider", "core_reference", "aligngen",
        "plain_b4", "msa_gathered", "msa_dense")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = find_comfyui()
    if root is None:
        pytest.skip("no ComfyUI host (set COMFYUI_PATH or run scripts/setup_host.sh)")
    out = tmp_path_factory.mktemp("gpu-suite") / "out.json"
    done = subprocess.run([str(host_python(root)), "bench/gpu_suite.py", "--preset", "cpu-tiny", "--repeats", "1",
                           "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_every_row_has_finite_positive_figures(suite):
    result, _ = suite
    rows = {row["key"]: row for row in result["rows"]}
    assert set(ROWS) <= set(rows), f"missing rows: {sorted(set(ROWS) - set(rows))}"
    for key, row in rows.items():
        for name in ("seconds", "ratio", "predicted"):
            assert math.isfinite(row[name]) and row[name] > 0, f"{key}: {name} = {row[name]}"
        assert row["times"] and all(math.isfinite(t) and t > 0 for t in row["times"]), key
        assert row["baseline"] is None or row["baseline"] in rows, key
    assert rows["plain"]["ratio"] == 1.0 and rows["plain"]["predicted"] == 1.0
    assert rows["msa_gathered"]["baseline"] == "plain_b4"
    for key, row in rows.items():  # CUDA peaks where the host has a GPU, none on the CPU
        assert (row["peak_mib"] is None) if result["device"] == "cpu" else row["peak_mib"] > 0, key
    assert result["fit"]["a"] >= 0 and result["fit"]["b"] >= 0 and result["fit"]["a"] + result["fit"]["b"] > 0


def test_the_printed_table_names_every_row(suite):
    result, stdout = suite
    for row in result["rows"]:
        assert row["label"] in stdout, row["label"]
    assert ("n/a (CPU)" in stdout) == (result["device"] == "cpu")
