"""Per-tier outcome and time report for one pytest run (a pytest plugin loaded by tests/conftest.py).

At the end of the run it prints one line per tier: tests passed / skipped / failed and the seconds its
tests took (setup + call + teardown). With `REFCUSTOM_TIER_REPORT=path.json` it also writes those counts,
the skip reasons and the ComfyUI version the tier-2 tests ran on, so scripts/test.sh can fail closed
under CI when a tier did not really run (scripts/ci_gate.py reads it).

Tiers by folder: tests/model + tests/train are tier 1 (no ComfyUI); tests/nodes is tier 2 in-process;
tests/server is tier 2 against a headless server, except the browser test, which is its own line
because it needs Chromium as well as the host.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TIER_OF_FOLDER = {"model": "tier1", "train": "tier1", "nodes": "tier2-nodes", "server": "tier2-server"}
BROWSER_TESTS = {"test_browser_canvas.py"}
TIER_ORDER = ("tier1", "tier2-nodes", "tier2-server", "browser", "other")
REPORT_ENV = "REFCUSTOM_TIER_REPORT"


def tier_of(path: str | os.PathLike) -> str:
    path = Path(path).resolve()
    try:
        parts = path.relative_to(TESTS).parts
    except ValueError:
        return "other"
    if parts and parts[-1] in BROWSER_TESTS:
        return "browser"
    return TIER_OF_FOLDER.get(parts[0], "other") if len(parts) > 1 else "other"


class TierReport:
    def __init__(self):
        self.counts = defaultdict(lambda: {"passed": 0, "skipped": 0, "failed": 0, "seconds": 0.0})
        self.skip_reasons = defaultdict(list)

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report):
        tier = tier_of(report.fspath)
        counts = self.counts[tier]
        counts["seconds"] += report.duration
        if report.skipped:  # an xfail too: a known bug is a test that did not pass, and CI says so
            counts["skipped"] += 1
            if hasattr(report, "wasxfail"):
                reason = f"xfail (a known bug; fix it or delete the test): {report.wasxfail}"
            else:
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skip_reasons[tier].append(f"{report.nodeid}: {reason}")
        elif report.failed:
            counts["failed"] += 1
        elif report.when == "call":
            counts["passed"] += 1

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter):
        if not self.counts:
            return
        host = comfyui_version()
        terminalreporter.write_sep("-", "time per tier")
        seed = random_order_seed(terminalreporter.config)
        if seed is not None:  # pytest-randomly's own header line is hidden under -q
            terminalreporter.write_line(f"random order: --randomly-seed={seed} (pass it to replay this order)")
        for tier in sorted(self.counts, key=TIER_ORDER.index):
            c = self.counts[tier]
            where = f" on ComfyUI {host}" if tier != "tier1" and host else ""
            terminalreporter.write_line(
                f"{tier:13s} {c['passed']:4d} passed {c['skipped']:3d} skipped {c['failed']:3d} failed "
                f"{c['seconds']:7.1f} s{where}")
        path = os.environ.get(REPORT_ENV)
        if path:
            Path(path).write_text(json.dumps({
                "comfyui_version": host,
                "tiers": {tier: dict(c, skip_reasons=self.skip_reasons[tier]) for tier, c in self.counts.items()},
            }, indent=1))


def random_order_seed(config) -> int | None:
    """pytest-randomly's seed for this run, or None when it is not installed or is disabled (-p no:randomly)."""
    if not config.pluginmanager.hasplugin("randomly"):
        return None
    try:
        return config.getoption("randomly_seed")
    except ValueError:
        return None


def comfyui_version() -> str | None:
    """The version of the ComfyUI host the tier-2 tests use (tests/comfy_host.py finds it), if any."""
    import re

    from refcustom.tests.comfy_host import ComfyUINotFound, find_comfyui

    try:
        root = find_comfyui()
    except ComfyUINotFound:
        return None
    if root is None or not (root / "comfyui_version.py").is_file():
        return None
    match = re.search(r'__version__\s*=\s*"([^"]+)"', (root / "comfyui_version.py").read_text())
    return match.group(1) if match else None
