"""The declared ComfyUI floor: pyproject states it, and on an older host the pack registers no node and
logs one line that says why (tier 2: the real entrypoint, with the host's version string replaced)."""

import asyncio
import logging
import sys
import types

import pytest
import tomllib

import refcustom
from refcustom.nodes.host_version import MIN_COMFYUI_TEXT, parse_version, too_old_message
from refcustom.tests.comfy_host import REPO_ROOT


def registered_nodes(version: str | None, monkeypatch) -> list:
    if version is None:
        monkeypatch.setitem(sys.modules, "comfyui_version", None)  # the import fails
    else:
        monkeypatch.setitem(sys.modules, "comfyui_version", types.SimpleNamespace(__version__=version))
    extension = asyncio.run(refcustom.comfy_entrypoint())
    return asyncio.run(extension.get_node_list())


def test_pyproject_declares_the_floor_the_code_enforces():
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["comfy"]["requires-comfyui"]
    assert declared == f">={MIN_COMFYUI_TEXT}" == ">=0.3.60"


@pytest.mark.parametrize("version", ["0.3.59", "0.3.48", "0.2.7", "v0.3.57"])
def test_an_older_host_gets_no_nodes_and_one_clear_line(version, monkeypatch, caplog):
    with caplog.at_level(logging.ERROR):
        assert registered_nodes(version, monkeypatch) == []
    [record] = [r for r in caplog.records if "refcustom needs ComfyUI" in r.getMessage()]
    assert ">= 0.3.60" in record.getMessage() and f"this is ComfyUI {version}" in record.getMessage()
    assert "Update ComfyUI" in record.getMessage()


@pytest.mark.parametrize("version", ["0.3.60", "0.3.61", "0.4.0", "0.8.0", "1.0.0", None, "nightly"])
def test_the_floor_and_newer_or_unreadable_versions_get_every_node(version, monkeypatch, caplog):
    with caplog.at_level(logging.ERROR):
        nodes = registered_nodes(version, monkeypatch)
    assert len([n for n in nodes if n.define_schema().node_id.startswith("RefCustom_")]) == 10
    assert "refcustom needs ComfyUI" not in caplog.text


def test_this_host_is_within_the_range():
    import comfyui_version

    assert too_old_message(comfyui_version.__version__) is None
    assert parse_version(comfyui_version.__version__) >= parse_version(MIN_COMFYUI_TEXT)
