"""Builders: plain arguments in, parts out; build_parts reads the config once."""

from __future__ import annotations

import warnings

import pytest
from conftest import tiny_config

from gradlab.build import build_counterfactuals, build_method, build_parts
from gradlab.config import load_config
from gradlab.seeding import derive_seed


def test_build_method_gives_a_seed_only_to_methods_that_take_one():
    assert build_method("pcgrad", seed=5).seed == 5
    assert build_method("pcgrad", {"seed": 2, "reduction": "mean"}, seed=5).seed == 2
    assert build_method("random", seed=7).seed == 7
    assert repr(build_method("mgda", seed=5)) == repr(build_method("mgda"))  # takes no seed
    with pytest.raises(TypeError, match=r"method 'mean' got unexpected arguments seed=1"):
        build_method("mean", {"seed": 1})
    with pytest.raises(ValueError, match="unknown method 'pcgard'"):
        build_method("pcgard")


def test_counterfactual_methods_get_derived_seeds():
    methods = build_counterfactuals(["sum", "pcgrad", "gradvac", "random"], seed=3)
    assert list(methods) == ["sum", "pcgrad", "gradvac", "random"]
    for name in ("pcgrad", "gradvac", "random"):
        assert methods[name].seed == derive_seed(3, "counterfactual", name)
    assert len({methods[n].seed for n in ("pcgrad", "gradvac", "random")}) == 3


def test_build_parts_turns_a_config_into_parts(tmp_path):
    cfg = load_config(None, tiny_config(tmp_path, method="pcgrad", method_args={
        "reduction": "mean"}, seed=4, schedule="round_robin", step_budget="per_task",
        steps=5, train_limit=32, max_length=24))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        parts = build_parts(cfg)
    assert parts.tasks == ["sst", "para", "sts"] and parts.total_steps == 15
    assert repr(parts.method) == "PCGrad(reduction='mean', seed=4)"
    assert set(parts.counterfactuals) == {"sum", "mean", "pcgrad"}
    assert parts.counterfactuals["pcgrad"].seed == derive_seed(4, "counterfactual", "pcgrad")
    assert [parts.schedule.active_tasks(s) for s in range(4)] == [[0], [1], [2], [0]]
    assert {t: len(d.tokenized) for t, d in parts.train_sets.items()} == \
        {"sst": 32, "para": 32, "sts": 32}
    assert parts.engine.jacobian.shape == (3, parts.engine.num_params)
    assert parts.scheduler.get_last_lr()[0] == 0.0  # linear warmup starts at 0
    for task, batch in parts.probe_batches.items():
        assert batch["labels"].shape == (4,), task
    assert all(b.batch_size == 4 and b.seed == 4 and b.state_dict()["position"] == 0
               for b in parts.batchers.values())  # building draws no training batch
