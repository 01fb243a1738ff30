"""Two processes (CPU, gloo) under torchrun: the trainer's accelerate/DDP path runs end to end.

On GPUs `accelerate launch --multi_gpu` starts the processes (it calls torchrun); for CPUs accelerate's
launcher only knows mpirun, so the test starts the same worker processes with torchrun, and
accelerate's Accelerator picks up the distributed environment exactly as under its own launcher.
Tier 1, but it starts processes: about 20 s. Each process takes its half of every epoch's batches;
the test checks that both finish every step, that the main process exports, and that the two
processes' trained weights are identical (DDP averaged their gradients every step).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from refcustom.train.synthetic import write_shapes_dataset
from refcustom.train.tiny_model import write_tiny_flux

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun is not installed")
def test_two_processes_train_in_step(tmp_path):
    data = write_shapes_dataset(tmp_path / "shapes", count=8, seed=2)
    model = write_tiny_flux(tmp_path / "tiny-flux")
    config = {
        "mode": "dreamo", "output_dir": str(tmp_path / "run"), "seed": 1,
        "model": {"pretrained": "tiny", "tiny_dir": str(model), "max_text_tokens": 32},
        "data": {"folder": str(data), "resolution": 64, "reference_resolution": 32, "batch_size": 1},
        "lora": {"rank": 4}, "dreamo": {"routing_layers": [0, 1]},
        "stages": [{"name": "train", "steps": 6}],
        "run": {"log_every": 1, "checkpoint_every": 6, "sample_count": 0, "export_dtype": "float32"},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    # The package is this checkout: a tiny shim folder named `refcustom` pointing here goes on PYTHONPATH.
    shim = tmp_path / "pkg"
    shim.mkdir()
    (shim / "refcustom").symlink_to(REPO)
    launcher = Path(sys.executable).with_name("torchrun")
    # ACCELERATE_USE_CPU is what `accelerate launch --cpu` sets; with it accelerate runs MULTI_CPU (gloo).
    env = {**os.environ, "PYTHONPATH": str(shim), "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(
        [str(launcher), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
         str(Path(__file__).with_name("rank_weights_run.py")), str(tmp_path / "cfg.yaml"), str(tmp_path / "rank")],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(log) == 6
    assert (tmp_path / "run" / "dreamo_lora.safetensors").is_file()
    rank0, rank1 = (load_file(str(tmp_path / f"rank-{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert (rank0[key] - rank1[key]).abs().max() < 1e-6, key
