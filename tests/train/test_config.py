"""train/config.py: YAML/TOML loading, overrides, unknown keys, validation, stages, the documented defaults.

Expected values are written out here by hand (the files' contents, the stage boundaries); the
documentation check walks the dataclasses itself rather than trusting the renderer.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from refcustom.train.config import (
    StageOptions,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    default_config,
    default_config_text,
    load_config,
)

YAML_TEXT = """\
mode: dreamo
seed: 3
output_dir: runs/test
model:
  pretrained: tiny
  guidance: 2.5
data:
  folder: data/shapes
  resolution: 256
optim:
  learning_rate: 0.0001
  weight_decay: 0.02
  betas: [0.8, 0.95]
dreamo:
  routing_layers: [0, 1]
stages:
  - {name: warmup, steps: 4, subsets: [single]}
  - {name: full, steps: 6, learning_rate: 0.00005}
"""

TOML_TEXT = """\
mode = "dreamo"
seed = 3
output_dir = "runs/test"

[model]
pretrained = "tiny"
guidance = 2.5

[data]
folder = "data/shapes"
resolution = 256

[optim]
learning_rate = 0.0001
weight_decay = 0.02
betas = [0.8, 0.95]

[dreamo]
routing_layers = [0, 1]

[[stages]]
name = "warmup"
steps = 4
subsets = ["single"]

[[stages]]
name = "full"
steps = 6
learning_rate = 0.00005
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_and_toml_load_to_the_same_config(tmp_path):
    from_yaml = load_config(_write(tmp_path, "c.yaml", YAML_TEXT))
    from_toml = load_config(_write(tmp_path, "c.toml", TOML_TEXT))
    assert config_to_dict(from_yaml) == config_to_dict(from_toml)
    # the values really came from the file, not from defaults
    assert from_yaml.seed == 3
    assert from_yaml.model.guidance == 2.5
    assert from_yaml.data.resolution == 256
    assert from_yaml.optim.betas == [0.8, 0.95]
    assert from_yaml.dreamo.routing_layers == [0, 1]
    assert [(s.name, s.steps, s.learning_rate, s.subsets) for s in from_yaml.stages] == [
        ("warmup", 4, None, ["single"]),
        ("full", 6, 0.00005, None),
    ]
    assert all(isinstance(s, StageOptions) for s in from_toml.stages)
    # untouched options keep their defaults
    assert from_toml.lora.rank == TrainConfig().lora.rank
    assert load_config(_write(tmp_path, "c.yml", YAML_TEXT)).seed == 3


def test_nested_overrides_win_and_merge(tmp_path):
    path = _write(tmp_path, "c.yaml", YAML_TEXT)
    config = load_config(path, {"seed": 11, "optim": {"learning_rate": 0.0003}, "data": {"batch_size": 4}})
    assert config.seed == 11
    assert config.optim.learning_rate == 0.0003
    assert config.optim.weight_decay == 0.02  # the sibling from the file survives the nested override
    assert config.data.batch_size == 4
    assert config.data.resolution == 256
    assert config.data.folder == "data/shapes"
    assert load_config(path, {}).optim.learning_rate == 0.0001


@pytest.mark.parametrize(
    ("values", "bad", "valid"),
    [
        ({"moed": "dreamo"}, "moed", ["mode", "output_dir", "stages"]),
        ({"optim": {"learnin_rate": 1e-4}}, "learnin_rate", ["learning_rate", "weight_decay", "betas"]),
        ({"stages": [{"name": "a", "stepz": 3}]}, "stepz", ["steps", "reference_token_drop", "subsets"]),
    ],
    ids=["top-level", "nested", "stage"],
)
def test_unknown_keys_are_errors_listing_valid_keys(values, bad, valid):
    with pytest.raises(ValueError) as info:
        config_from_dict(values)
    message = str(info.value)
    assert repr(bad) in message
    for key in valid:
        assert repr(key) in message


def test_unknown_nested_key_names_its_section():
    with pytest.raises(ValueError, match=r"in optim\b"):
        config_from_dict({"optim": {"learnin_rate": 1e-4}})


@pytest.mark.parametrize(
    ("values", "option_name"),
    [
        ({"mode": "dreambooth"}, "mode"),
        ({"data": {"resolution": 500}}, "data.resolution"),
        ({"data": {"reference_resolution": 8}}, "data.reference_resolution"),
        ({"stages": [{"name": "a", "steps": 3}, {"name": "b", "steps": 0}]}, "steps"),
        ({"stages": [{"name": "a", "steps": 3, "reference_token_drop": 1.0}]}, "reference_token_drop"),
        ({"mode": "aligngen"}, "model.redux"),
        ({"optim": {"timestep_sampling": "cosine"}}, "optim.timestep_sampling"),
        ({"stages": []}, "stages"),
    ],
    ids=["mode", "resolution", "reference-resolution", "steps", "token-drop", "redux", "sampling", "no-stages"],
)
def test_validation_errors_name_the_option(values, option_name):
    with pytest.raises(ValueError) as info:
        config_from_dict(values)
    assert option_name in str(info.value)


def test_valid_edge_values_pass():
    config = config_from_dict({
        "mode": "aligngen",
        "model": {"redux": "tiny"},
        "data": {"resolution": 16, "reference_resolution": 1024},
        "stages": [{"name": "q", "steps": 1, "reference_token_drop": 0.95}],
    })
    assert config.mode == "aligngen"
    assert config.stages[0].reference_token_drop == 0.95


def test_stage_at_and_total_steps():
    config = config_from_dict({"stages": [
        {"name": "a", "steps": 3},
        {"name": "b", "steps": 5},
        {"name": "c", "steps": 2},
    ]})
    assert config.total_steps == 10
    expected = {0: "a", 1: "a", 2: "a", 3: "b", 4: "b", 5: "b", 6: "b", 7: "b", 8: "c", 9: "c"}
    stage_index = {"a": 0, "b": 1, "c": 2}
    for step, name in expected.items():
        index, stage = config.stage_at(step)
        assert (index, stage.name) == (stage_index[name], name), step


def _option_fields(cls, seen=None):
    """Every (class, field) of TrainConfig and the option dataclasses it nests, plus StageOptions."""
    seen = set() if seen is None else seen
    if cls in seen:
        return []
    seen.add(cls)
    found = []
    instance = cls()
    for f in dataclasses.fields(cls):
        found.append((cls, f))
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            found += _option_fields(type(value), seen)
    return found


ALL_FIELDS = _option_fields(TrainConfig) + _option_fields(StageOptions)


def test_field_walk_covers_the_option_classes():
    classes = {cls.__name__ for cls, _ in ALL_FIELDS}
    assert {"TrainConfig", "ModelOptions", "DataOptions", "LoraOptions", "DreamOOptions", "AlignGenOptions",
            "OptimOptions", "RunOptions", "StageOptions"} <= classes


@pytest.mark.parametrize("mode", ["dreamo", "aligngen"])
def test_default_config_text_round_trips_and_documents_every_option(mode):
    text = default_config_text(mode)
    parsed = yaml.safe_load(text)
    config = config_from_dict(parsed)
    assert config.mode == mode
    assert config_to_dict(config) == config_to_dict(default_config(mode))
    lines = [line.strip() for line in text.splitlines()]
    for cls, f in ALL_FIELDS:
        doc = f.metadata.get("doc", "")
        assert isinstance(doc, str) and doc.strip(), f"{cls.__name__}.{f.name} has no doc"
        assert f"{f.name}:" in text, f"{cls.__name__}.{f.name} missing from the rendered config"
        assert any(doc in line for line in lines if line.startswith("#")), f"{cls.__name__}.{f.name} doc not rendered"


def test_missing_config_file_points_at_print_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="print-config"):
        load_config(tmp_path / "nope.yaml")


def test_unsupported_suffix_is_rejected(tmp_path):
    path = _write(tmp_path, "c.json", '{"seed": 1}')
    with pytest.raises(ValueError, match=r"\.yaml"):
        load_config(path)


def test_default_lists_are_not_shared_between_configs():
    first, second = TrainConfig(), config_from_dict({})
    original = list(first.dreamo.routing_layers)
    first.dreamo.routing_layers.append(99)
    try:
        assert second.dreamo.routing_layers == original
        assert TrainConfig().dreamo.routing_layers == original
    finally:
        # undo the leak for every later test if the lists are shared
        del first.dreamo.routing_layers[len(original):]


def test_low_precision_base_needs_mixed_precision():
    with pytest.raises(ValueError, match="optim.mixed_precision"):
        config_from_dict({"model": {"weight_dtype": "bfloat16"}})
    assert config_from_dict({"model": {"weight_dtype": "bfloat16"}, "optim": {"mixed_precision": "bf16"}})
