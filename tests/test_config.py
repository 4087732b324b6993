"""Config: defaults -> YAML -> key=value overrides; unknown keys listed at once; safe YAML."""

from __future__ import annotations

import pytest

from gradlab.config import ConfigError, TrainConfig, config_keys, load_config, save_config
from gradlab.schedules import Joint, RoundRobin, Sequential, get_schedule


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config(None, ["steps=10", "method=pcgrad", "lr=1e-4", "tasks=[sst, sts]",
                             "max_grad_norm=null", 'method_args={reduction: mean}'])
    assert cfg.steps == 10 and cfg.method == "pcgrad" and cfg.lr == 1e-4
    assert cfg.tasks == ["sst", "sts"] and cfg.max_grad_norm is None
    assert cfg.method_args == {"reduction": "mean"}


def test_unknown_keys_are_listed_together_with_valid_keys(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("stepz: 3\nmethod: sum\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["bogus=1"])
    text = str(err.value)
    for key in ("stepz", "learning_rate", "bogus"):
        assert repr(key) in text
    assert "did you mean 'steps'" in text and "valid keys:" in text and str(path) in text


def test_bad_values_are_listed_together():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method=nope", "schedule=sometimes", "steps=0", "tasks=[sst, xyz]",
                           "name=../escape"])
    text = str(err.value)
    assert "5 problem(s)" in text
    for fragment in ("method='nope'", "schedule='sometimes'", "steps=0", "'xyz'", "name="):
        assert fragment in text


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(None, ["steps=7", "tiny_encoder={hidden_size: 32}"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_yaml_cannot_execute_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned > pwned.txt']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert not (tmp_path / "pwned.txt").exists()


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_every_field_has_a_default():
    assert TrainConfig() is not None
    assert "method" in config_keys() and "probe_every" in config_keys()


def test_schedules_order_tasks():
    rr = get_schedule("round_robin", 3, 7)
    assert isinstance(rr, RoundRobin)
    assert [rr.active_tasks(s) for s in range(7)] == [[0], [1], [2], [0], [1], [2], [0]]
    assert Joint(3, 5).active_tasks(4) == [0, 1, 2] and Joint(3, 5).is_joint
    seq = Sequential(3, 7)
    assert [seq.active_tasks(s)[0] for s in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="schedule='x'"):
        get_schedule("x", 3, 5)
    with pytest.raises(ValueError, match="summing to steps"):
        Sequential(2, 5, [1, 1])
