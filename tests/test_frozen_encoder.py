"""freeze_encoder: the heads-only baseline trains no encoder weight, logs no Gramians, and is
compared with the fine-tuned runs as its own variant, "frozen"."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

import gradlab
from gradlab.build import build_parts
from gradlab.config import ConfigError, load_config
from gradlab.plot import comparison_table
from gradlab.run import NoGradientDataError
from gradlab.step import train_step


def test_freeze_encoder_is_type_checked_and_only_with_the_sum_method():
    with pytest.raises(ConfigError, match=r"freeze_encoder='yes' must be of type bool"):
        load_config(None, {"freeze_encoder": "yes"})
    with pytest.raises(ConfigError, match=r"freeze_encoder=true .* method='pcgrad'.* method=sum"):
        load_config(None, {"freeze_encoder": True, "method": "pcgrad"})
    assert load_config(None, ["freeze_encoder=true"]).freeze_encoder is True
    assert load_config(None).freeze_encoder is False


def test_a_frozen_step_moves_the_heads_only():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # truncation notices
        parts = build_parts(load_config(None, tiny_config(
            Path("unused"), train_limit=32, max_length=24, freeze_encoder=True)))
    assert parts.model.shared_parameters() == [] and parts.engine.num_params == 0
    assert all(not p.requires_grad for p in parts.model.encoder.parameters())
    encoder = {k: v.clone() for k, v in parts.model.encoder.state_dict().items()}
    heads = {k: v.clone() for k, v in parts.model.heads.state_dict().items()}
    result = train_step(parts, parts.tasks, step=0)
    assert result.fault is None and result.block_gramians.shape == (0, 3, 3)
    parts.optimizer.step()
    assert all(torch.equal(v, encoder[k]) for k, v in parts.model.encoder.state_dict().items())
    moved = [k for k, v in parts.model.heads.state_dict().items() if not torch.equal(v, heads[k])]
    assert {k.split(".")[0] for k in moved} == {"sst", "para", "sts"}  # every head trained


def test_frozen_run_logs_no_gramians_and_is_compared_as_the_frozen_variant(tmp_path,
                                                                          tiny_overrides):
    with pytest.warns(UserWarning, match="encoder is frozen .* no Gramians, probes"):
        gradlab.train(None, name="frozen", freeze_encoder=True, **tiny_overrides)
    gradlab.train(None, name="sum", **tiny_overrides)
    frozen = gradlab.load_run(tmp_path / "runs" / "frozen")
    assert frozen.method == "frozen" and frozen.blocks == []
    assert not frozen.losses().empty
    with pytest.raises(NoGradientDataError, match=r"gradient data: freeze_encoder=true \("):
        frozen.cosines()  # one reason, said once
    runs = gradlab.load_runs([tmp_path / "runs" / "sum", tmp_path / "runs" / "frozen"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # freeze_encoder is no "settings differ" warning
        table = comparison_table(runs)
    assert list(table["method"].unique()) == ["frozen", "sum"]  # the baseline row first
    assert (table["baseline"] == "sum").all()


def test_a_killed_frozen_run_resumes_to_the_uninterrupted_heads(tmp_path, tiny_overrides):
    values = {**tiny_overrides, "freeze_encoder": True, "checkpoint_every": 2, "steps": 6}

    def crash(step, model):
        if step == 3:
            raise KeyboardInterrupt  # as if killed after step 3 (checkpoint at step 2)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        whole = gradlab.train(None, name="whole", **values)
        with pytest.raises(KeyboardInterrupt):
            gradlab.train(None, name="killed", _after_step=crash, **values)
        resumed = gradlab.train(None, name="killed", resume=True, **values)
    assert resumed.metrics == whole.metrics
    a, b = (load_file(str(h.path / "checkpoints" / "last" / "model.safetensors"))
            for h in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
