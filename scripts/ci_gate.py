"""Fail closed under CI: exit 1, saying why, when a tier that CI needs did not really run.

    python3 scripts/ci_gate.py MAIN_REPORT.json [FLOOR_REPORT.json]

The reports are the per-tier counts tests/tier_report.py writes (REFCUSTOM_TIER_REPORT). A tier counts as
run only if it passed tests; a tier-2 or browser tier must also skip none (a skip is a test that
did not run). CI needs tier 1, tier 2
(in-process nodes and the headless server) on ComfyUI 0.8.0, the browser test, and the in-process node
tests on the floor ComfyUI (pyproject's requires-comfyui). Stdlib only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MAIN_VERSION = "0.8.0"
FLOOR_VERSION = "0.3.60"
HOW_TO_FIX = {
    "host": "no ComfyUI host: set COMFYUI_PATH, or COMFYUI_ARCHIVE=/path/to/comfyui-v0.8.0.tar.gz "
            "(.ci/run uses ../shared/hosts/ when it is there), or let scripts/setup_host.sh clone it",
    "floor": "no floor host: set COMFYUI_FLOOR_ARCHIVE=/path/to/comfyui-v0.3.60.tar.gz (.ci/run uses "
             "../shared/hosts/ when it is there) or COMFYUI_FLOOR_PATH to an unpacked ComfyUI 0.3.60",
    "browser": "no Chromium or playwright: scripts/setup_host.sh installs them (Debian's chromium needs root "
               "apt-get), or set REFCUSTOM_CHROMIUM to a Chromium binary",
}


def load(path: str | None) -> dict | None:
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


def tier_problems(report: dict | None, tier: str, label: str, fix: str, version: str,
                  skips_count: bool = True) -> list[str]:
    if report is None:
        return [f"{label} did not run ({fix})"]
    counts = report["tiers"].get(tier)
    if counts is None or counts["passed"] == 0:
        return [f"{label} did not run: no test of it passed ({fix})"]
    problems = []
    if tier != "tier1" and report.get("comfyui_version") != version:
        problems.append(f"{label} ran on ComfyUI {report.get('comfyui_version')}, not {version}")
    if skips_count and counts["skipped"]:
        reasons = "\n    ".join(counts["skip_reasons"][:10])
        problems.append(f"{label}: {counts['skipped']} test(s) skipped, which CI counts as not run ({fix}):\n    {reasons}")
    return problems


def main(argv: list[str]) -> int:
    main_report = load(argv[1] if len(argv) > 1 else None)
    floor_report = load(argv[2] if len(argv) > 2 else None)
    problems = tier_problems(main_report, "tier1", "tier 1", "see the pytest output above", MAIN_VERSION,
                             skips_count=False)
    if main_report is not None and main_report.get("comfyui_version") is None:
        problems.append(f"tier 2 did not run ({HOW_TO_FIX['host']})")
    else:
        problems += tier_problems(main_report, "tier2-nodes", "tier 2 (in-process nodes)", HOW_TO_FIX["host"], MAIN_VERSION)
        problems += tier_problems(main_report, "tier2-server", "tier 2 (headless server)", HOW_TO_FIX["host"], MAIN_VERSION)
        problems += tier_problems(main_report, "browser", "the browser test", HOW_TO_FIX["browser"], MAIN_VERSION)
    problems += tier_problems(floor_report, "tier2-nodes", f"tier 2 on the floor ComfyUI {FLOOR_VERSION}",
                              HOW_TO_FIX["floor"], FLOOR_VERSION)
    for problem in problems:
        print(f"ci_gate: FAIL: {problem}")
    if problems:
        print("ci_gate: CI=true needs every tier to run; see above for why one did not.")
        return 1
    print("ci_gate: every tier ran (tier 1, tier 2 nodes + server + browser on 0.8.0, nodes on the floor 0.3.60)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
