"""The oldest ComfyUI the pack works on, and the check that keeps it off older hosts.

Below v0.3.60 the pack still imports and every workflow finishes, but images come out wrong: the core
hooks it relies on are simply never called. Post-input patches and the diagonal `uxo` reference layout
arrived in v0.3.57, the attention override (masked shared attention, AlignGen's selective mask) in
v0.3.60, which therefore sets the floor. On an older host no node is registered and one log line says
why, rather than nodes that sample silently wrong images.
"""

from __future__ import annotations

import re

MIN_COMFYUI = (0, 3, 60)
MIN_COMFYUI_TEXT = ".".join(map(str, MIN_COMFYUI))


def host_version() -> str | None:
    """ComfyUI's version string (its root `comfyui_version.py`), or None if the host has none."""
    try:
        import comfyui_version
    except ImportError:
        return None
    return getattr(comfyui_version, "__version__", None)


def parse_version(text: str) -> tuple[int, int, int] | None:
    match = re.match(r"^\s*v?(\d+)\.(\d+)\.(\d+)", text or "")
    return tuple(int(g) for g in match.groups()) if match else None


def too_old_message(version: str | None) -> str | None:
    """The line to log when `version` is below the floor; None when it is fine or cannot be read."""
    parsed = parse_version(version) if version else None
    if parsed is None or parsed >= MIN_COMFYUI:
        return None
    return (
        f"refcustom needs ComfyUI >= {MIN_COMFYUI_TEXT} (its attention override; post-input patches and the "
        f"'uxo' reference layout from v0.3.57), but this is ComfyUI {version}: its hooks would never be called "
        "and images would come out wrong, so no refcustom node is registered. Update ComfyUI "
        "(git pull, or ComfyUI Manager's 'Update ComfyUI')."
    )
