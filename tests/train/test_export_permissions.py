"""train/export.py: an exported file gets the permission bits of any file the user creates (world-readable
under the usual umask 022), is written atomically, and loads back.

The expected mode is not computed from the implementation's arithmetic: it is what `open(path, "w")`
gives a fresh file under the same umask, read with os.stat, plus the literal 0o644 for umask 022.
Every export (trainer.export, `python -m refcustom.train export [--out]`) goes through `export_trained`;
both layouts are written here from small hand-made tensors, no model.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from refcustom.train.config import default_config
from refcustom.train.export import export_trained

RANK, WIDTH = 2, 8


class DreamOTrainables:
    """What the DreamO method's `trainable_state_dict` holds: one peft LoRA pair and the three tables."""

    def trainable_state_dict(self):
        prefix = "lora.transformer_blocks.0.attn.to_qkv"
        return {f"{prefix}.lora_A.weight": torch.ones(RANK, WIDTH), f"{prefix}.lora_B.weight": torch.ones(3 * WIDTH, RANK),
                "condition.task": torch.zeros(2, WIDTH), "condition.index": torch.zeros(10, WIDTH),
                "placeholders": torch.zeros(10, 4)}


class AlignGenTrainables:
    """The AlignGen method's export hook: its own layout and extra metadata."""

    def trainable_state_dict(self):
        return {}

    def export_tensors(self):
        return {"aligngen.learned_token": torch.ones(4)}, {"layout": "aligngen-v2"}


METHODS = {"dreamo": DreamOTrainables, "aligngen": AlignGenTrainables}


def plain_file_mode(folder: Path) -> int:
    probe = folder / "plain-open.txt"
    with open(probe, "w") as f:
        f.write("x")
    return stat.S_IMODE(os.stat(probe).st_mode)


def export(mode: str, path: Path) -> Path:
    return export_trained(METHODS[mode](), default_config(mode), path, "tiny", "2026-01-01T00:00:00")


@pytest.mark.parametrize("mode", ["dreamo", "aligngen"])
@pytest.mark.parametrize("umask", [None, 0o022, 0o002, 0o077], ids=["current", "022", "002", "077"])
def test_an_export_has_the_mode_a_plain_open_gives(tmp_path, mode, umask):
    previous = os.umask(umask) if umask is not None else None
    try:
        path = export(mode, tmp_path / "run" / f"{mode}_lora.safetensors")
        expected = plain_file_mode(tmp_path)
    finally:
        if previous is not None:
            os.umask(previous)
    assert stat.S_IMODE(os.stat(path).st_mode) == expected, (
        f"export mode {oct(stat.S_IMODE(os.stat(path).st_mode))}, plain open() gives {oct(expected)}")
    if umask == 0o022:
        assert expected == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "the temporary file was left behind"
    assert load_file(str(path)), "the export does not load back"


def test_an_export_replaces_an_older_one_and_stays_readable(tmp_path):
    previous = os.umask(0o022)
    try:
        path = tmp_path / "dreamo_lora.safetensors"
        path.write_bytes(b"an older export")
        os.chmod(path, 0o600)
        export("dreamo", path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert "dreamo_t5_embedding.weight" in load_file(str(path))
