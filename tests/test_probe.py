"""Probes: batches named by (seed, step, task, replicate), all task gradients without changing
anything."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_parts

from gradlab.probe import probe, probe_indices, virtual_step


def test_probe_indices_are_a_fixed_sample_named_by_seed_and_keys():
    first = probe_indices(100, 8, 3, "sst")
    assert first.shape == (8,) and len(set(first.tolist())) == 8
    assert first.min() >= 0 and first.max() < 100
    np.testing.assert_array_equal(probe_indices(100, 8, 3, "sst"), first)  # a fresh generator
    for other in (probe_indices(100, 8, 4, "sst"), probe_indices(100, 8, 3, "sts"),
                  probe_indices(100, 8, 3, 10, "sst", 1)):  # step 10, replicate 1
        assert not np.array_equal(other, first)
    assert sorted(probe_indices(5, 9, 0, "sst").tolist()) == [0, 1, 2, 3, 4]  # at most N


def test_probe_gramians_do_not_depend_on_the_method():
    gramians = []
    for method in ("sum", "pcgrad"):
        parts = tiny_parts(method=method)
        result = probe(parts, step=0, lr=1e-3)
        assert result.fault is None
        gramians.append(result.block_gramians)
    torch.testing.assert_close(gramians[0], gramians[1], rtol=0, atol=0)


def test_probe_leaves_parameters_mode_and_head_gradients_as_found():
    parts = tiny_parts(counterfactual_methods=["sum", "pcgrad", "pcgrad_layerwise"])
    parts.model.train()
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    lr = 1e-3
    result = probe(parts, step=0, lr=lr, measure=True)
    assert parts.model.training
    assert all(torch.equal(before[k], v) for k, v in parts.model.state_dict().items())
    assert all(p.grad is None for p in parts.head_params)
    T = len(parts.tasks)
    gramian = result.block_gramians.sum(0)
    w, predicted, measured = result.counterfactuals["sum"]
    torch.testing.assert_close(w, torch.ones(T, dtype=torch.float64))
    torch.testing.assert_close(predicted, -lr * gramian.sum(1))  # -lr G w, w = 1
    assert measured.shape == (T,) and torch.isfinite(measured).all()
    w_layer, predicted_layer, _ = result.counterfactuals["pcgrad_layerwise"]
    assert w_layer.shape == (T,)  # blockwise weights [B, T] are logged block-averaged
    assert torch.isfinite(predicted_layer).all()


def test_virtual_step_measures_the_loss_after_an_sgd_step_and_restores_exactly():
    parts = tiny_parts()
    parts.model.eval()
    probe(parts, step=0, lr=0.0)  # fills J with the probe gradients
    flat = parts.engine.flat_params()
    unchanged = virtual_step(parts, torch.ones(len(parts.tasks), dtype=torch.float64), 0.0)
    moved = virtual_step(parts, torch.ones(len(parts.tasks), dtype=torch.float64), 1.0)
    assert torch.equal(parts.engine.flat_params(), flat)
    losses = torch.tensor([parts.loss(parts.model, t, parts.probe_batches[t], smart=False)[1]
                           for t in parts.tasks], dtype=torch.float64)
    torch.testing.assert_close(unchanged, losses)
    assert not torch.equal(moved, losses)


def test_probe_reports_a_nan_gradient_naming_task_and_block():
    parts = tiny_parts()
    param = next(p for n, p in parts.model.shared_parameters() if n.startswith("embeddings"))
    param.register_hook(lambda grad: grad * float("nan"))
    result = probe(parts, step=2, lr=1e-3)
    assert result.fault == "non-finite gradient of task 'sst' in block 'embeddings'"
    assert result.counterfactuals == {} and not torch.isfinite(result.block_gramians).all()


@pytest.mark.parametrize("task", ["sst", "sts"])
def test_probe_batches_are_replicate_zero_of_step_zero(task):
    parts = tiny_parts()
    index = probe_indices(len(parts.train_sets[task].tokenized), 4, 0, 0, task, 0)
    expected = parts.batch(task, index)
    got = parts.probe_batches[task]
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
