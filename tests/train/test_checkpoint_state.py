"""train/checkpoint_state.py: checkpoints without pickles, checked resume, the GradScaler round trip (tier 1).

- A checkpoint's files are safetensors and JSON only, and read back to the optimizer state it saved.
- A crafted pickle (its __reduce__ creates a marker file) under the old names (optimizer.pt, rng-0.pt)
  or under the new ones is refused with an error naming the fix, and the marker is never created.
- Resume refuses a changed config, naming each key with its old and new value; `allow_config_change`
  (the CLI's --allow-config-change) accepts named keys or sections, or any change.
- The GradScaler state goes through the checkpoint as JSON numbers. accelerate makes no scaler on CPU
  (fp16 there gives `accelerator.scaler is None`), so the test puts an enabled CPU torch.amp.GradScaler
  on the accelerator and checks save_checkpoint -> resume with it.
"""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
import yaml
from safetensors import safe_open

from refcustom.tests.train.test_dreamo_training import make_config, shapes, tiny_flux_dir  # noqa: F401 (fixtures)
from refcustom.train import checkpoint_state
from refcustom.train.cli import main
from refcustom.train.config import config_to_dict
from refcustom.train.trainer import Trainer


class Payload:
    """Unpickling this creates `marker`: what a crafted checkpoint file could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_pickle(tmp_path) -> tuple[bytes, object]:
    marker = tmp_path / "pwned"
    torch.save({"state": Payload(marker)}, tmp_path / "crafted.pt")
    data = (tmp_path / "crafted.pt").read_bytes()
    pickle.loads(pickle.dumps(Payload(marker))).close()  # the payload works: unpickling runs it
    assert marker.exists()
    marker.unlink()
    return data, marker


@pytest.fixture(scope="module")
def run_at_10(tmp_path_factory, tiny_flux_dir, shapes):  # noqa: F811
    """A run stopped at step 10 (one checkpoint), copied by each test that edits it."""
    out = tmp_path_factory.mktemp("run") / "run"
    Trainer(make_config(out, tiny_flux_dir, shapes)).train(max_steps=10)
    return out


def copy_run(run_at_10, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_at_10, out)
    return out, out / "checkpoints" / "step-00000010"


def test_checkpoint_is_safetensors_and_json_only(run_at_10, tmp_path, tiny_flux_dir, shapes):  # noqa: F811
    out, last = copy_run(run_at_10, tmp_path)
    assert sorted(p.name for p in last.iterdir()) == [
        "optimizer.json", "optimizer.safetensors", "rng-0.json", "rng-0.safetensors", "state.json",
        "trainable.safetensors"]
    for path in last.iterdir():
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            with safe_open(str(path), "pt") as handle:
                assert list(handle.keys())
    with safe_open(str(last / "optimizer.safetensors"), "pt") as handle:
        names = {key.split(".", 2)[2] for key in handle.keys()}
        assert all(key.startswith("state.") for key in handle.keys())
    assert names == {"step", "exp_avg", "exp_avg_sq"}  # AdamW
    assert json.loads((last / "state.json").read_text())["grad_scaler"] is None  # fp32: no scaler
    # What resume loads is what the optimizer had.
    trainer = Trainer(make_config(out, tiny_flux_dir, shapes))
    assert trainer.resume() and trainer.step == 10
    loaded, live = checkpoint_state.load_optimizer(last), trainer.optimizer.state_dict()
    assert loaded["param_groups"] == json.loads(json.dumps(live["param_groups"]))
    assert loaded["state"].keys() == live["state"].keys()
    for pid, values in live["state"].items():
        assert values.keys() == loaded["state"][pid].keys()
        assert all(torch.equal(values[k], loaded["state"][pid][k]) for k in values)


@pytest.mark.parametrize("names", [("optimizer.pt", "rng-0.pt"), ("optimizer.safetensors",), ("optimizer.json",),
                                   ("rng-0.safetensors",), ("rng-0.json",), ("state.json",),
                                   ("trainable.safetensors",)])
def test_crafted_pickle_is_refused_and_never_run(run_at_10, tmp_path, tiny_flux_dir, shapes, names):  # noqa: F811
    data, marker = crafted_pickle(tmp_path)
    out, last = copy_run(run_at_10, tmp_path)
    if names[0].endswith(".pt"):  # the old format: no safetensors/JSON optimizer and RNG files
        for stem in ("optimizer", "rng-0"):
            for suffix in (".json", ".safetensors"):
                (last / f"{stem}{suffix}").unlink(missing_ok=True)  # (lets this test run on the old trainer)
    for name in names:
        (last / name).write_bytes(data)
    trainer = Trainer(make_config(out, tiny_flux_dir, shapes))
    expected = "unpickling can run arbitrary code. Start a new run" if names[0].endswith(".pt") else \
        "not a valid .* file .*delete this checkpoint folder"
    with pytest.raises(ValueError, match=expected):
        trainer.resume()
    assert not marker.exists()
    assert trainer.step == 0


def test_changed_config_is_refused_unless_allowed(run_at_10, tmp_path, tiny_flux_dir, shapes):  # noqa: F811
    out, _ = copy_run(run_at_10, tmp_path)
    changed = dict(optim={"learning_rate": 1e-3},
                   stages=[{"name": "warmup", "steps": 10, "subsets": ["single"]}, {"name": "full", "steps": 30}],
                   run={"log_every": 5, "checkpoint_every": 7, "keep_checkpoints": 3})  # run.* is not compared
    with pytest.raises(ValueError, match=r"changed: optim\.learning_rate: 0\.002 -> 0\.001; stages\[1\]\.steps: 20 -> 30\. "
                                         r"Resume with the config .*--allow-config-change"):
        Trainer(make_config(out, tiny_flux_dir, shapes, **changed)).resume()
    with pytest.raises(ValueError, match=r"changed: optim\.learning_rate: 0\.002 -> 0\.001\. Resume"):
        Trainer(make_config(out, tiny_flux_dir, shapes, **changed), allow_config_change=["stages"]).resume()
    for allowed in (["stages", "optim.learning_rate"], True):
        trainer = Trainer(make_config(out, tiny_flux_dir, shapes, **changed), allow_config_change=allowed)
        assert trainer.resume() and trainer.step == 10
    # A path that moves with the run folder is not compared.
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    assert Trainer(make_config(moved, tiny_flux_dir, shapes)).resume()


def test_cli_allow_config_change(run_at_10, tmp_path, tiny_flux_dir, shapes, capsys):  # noqa: F811
    out, _ = copy_run(run_at_10, tmp_path)
    config = config_to_dict(make_config(out, tiny_flux_dir, shapes, optim={"learning_rate": 1e-3}))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), "--max-steps", "0"]) == 2  # the CLI prints the error, no traceback
    assert "optim.learning_rate: 0.002 -> 0.001" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "--max-steps", "0", "--allow-config-change", "optim.learning_rate"]) == 0
    assert main(["train", "--config", str(path), "--allow-config-change", "--max-steps", "0"]) == 0


def test_config_differences_rules():
    saved = {"output_dir": "a", "seed": 1, "run": {"log_every": 1}, "data": {"cache_dir": None, "folder": "d"},
             "stages": [{"name": "s", "steps": 5}], "optim": {"betas": [0.9, 0.999]}}
    same = json.loads(json.dumps(saved))
    same.update(output_dir="b", run={"log_every": 9}, data={"cache_dir": "c", "folder": "d"})
    assert checkpoint_state.config_differences(saved, same) == []
    more = json.loads(json.dumps(saved))
    more["stages"].append({"name": "t", "steps": 3})
    more["optim"]["betas"] = [0.9, 0.99]
    assert checkpoint_state.config_differences(saved, more) == [
        "optim.betas: [0.9, 0.999] -> [0.9, 0.99]", "stages.length: 1 -> 2", "stages[1].name: (absent) -> 't'",
        "stages[1].steps: (absent) -> 3"]
    assert checkpoint_state.config_differences(saved, more, ["stages"]) == ["optim.betas: [0.9, 0.999] -> [0.9, 0.99]"]
    assert checkpoint_state.config_differences(saved, more, ["optim", "stages"]) == []
    assert checkpoint_state.config_differences(saved, more, True) == []


def test_grad_scaler_state_round_trips_through_a_checkpoint(tmp_path, tiny_flux_dir, shapes):  # noqa: F811
    config = make_config(tmp_path / "run", tiny_flux_dir, shapes)
    trainer = Trainer(config)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    for grad in (1.0, float("inf"), 1.0, 1.0):  # one overflow (backoff), then growth tracking
        optimizer.zero_grad()
        scaler.scale((weight * grad).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    expected = scaler.state_dict()
    assert expected["scale"] == 512.0 and expected["_growth_tracker"] == 2
    trainer.accelerator.scaler = scaler
    trainer.save_checkpoint()  # step 0
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-00000000" / "state.json").read_text())
    assert saved["grad_scaler"] == expected
    resumed = Trainer(config)
    resumed.accelerator.scaler = torch.amp.GradScaler("cpu")
    assert resumed.resume()
    assert resumed.accelerator.scaler.state_dict() == expected
