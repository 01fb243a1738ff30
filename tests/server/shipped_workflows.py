"""The workflows this pack ships, as the server, API, browser and file tests all enumerate them."""

from __future__ import annotations

from refcustom.tests.comfy_host import REPO_ROOT

WORKFLOWS = REPO_ROOT / "workflows"
API_WORKFLOWS = sorted((WORKFLOWS / "api").glob("*.json"))  # API format: one per shipped workflow
UI_WORKFLOWS = sorted(WORKFLOWS.glob("*.json"))  # UI format: what the template browser lists
NAMES = [path.stem for path in API_WORKFLOWS]
