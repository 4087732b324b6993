"""PCGrad and layer-wise PCGrad (_pcgrad.py, _pcgrad_layerwise.py): against Algorithm 1 of
Yu et al. run on explicit vectors, pinned values and their projection events."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_methods import (
    J_PINNED,
    cosine,
    jacobian_family,
    make_input,
    split_blocks,
    update,
)

from gradlab.methods import get_method


def assert_same_events(events, expected: list[tuple]) -> None:
    """ProjectionEvents equal (i, j, coefficient, cosine) tuples: pairs exactly, values closely."""
    assert [(e.i, e.j) for e in events] == [(i, j) for i, j, _, _ in expected]
    np.testing.assert_allclose(
        np.array([(e.coefficient, e.cosine) for e in events]).reshape(-1, 2),
        np.array([(c, cos) for _, _, c, cos in expected]).reshape(-1, 2),
        rtol=1e-9,
        atol=1e-12,
    )


def brute_pcgrad(J: np.ndarray, generator: torch.Generator, reduction: str = "sum"):
    """Algorithm 1 of Yu et al. on explicit vectors; same draws as the method."""
    rows, events = [], []
    for i in range(len(J)):
        g = J[i].copy()
        for j in torch.randperm(len(J), generator=generator).tolist():
            if j == i or J[j] @ J[j] == 0:
                continue
            dot = g @ J[j]
            if dot < 0:
                coefficient = dot / (J[j] @ J[j])
                events.append((i, j, coefficient, cosine(g, J[j])))
                g = g - coefficient * J[j]
        rows.append(g)
    total = np.sum(rows, axis=0)
    return (total if reduction == "sum" else total / len(J)), events


def test_pcgrad_pinned_update_and_events():
    out = get_method("pcgrad")(make_input(J_PINNED))
    np.testing.assert_allclose(update(out.weights, J_PINNED), [0.5848, 3.8012, 3.8012], atol=1e-4)
    cos = -22 / math.sqrt(18 * 38)  # G = [[18, -22], [-22, 38]]
    # Compared field by field: pytest.approx does not take nested structures (pytest >= 9.2).
    events = [(e.i, e.j, e.block) for e in out.projections]
    assert events == [(0, 1, None), (1, 0, None)]
    assert [e.coefficient for e in out.projections] == pytest.approx([-22 / 38, -22 / 18])
    assert [e.cosine for e in out.projections] == pytest.approx([cos, cos])
    assert out.extras == {"projections": 2.0}
    mean = get_method("pcgrad", reduction="mean")(make_input(J_PINNED))
    assert torch.allclose(mean.weights, out.weights / 2)


@pytest.mark.parametrize("name", ["pcgrad", "pcgrad_layerwise"])
def test_pcgrad_without_conflict_is_exactly_the_sum(name):
    for J in jacobian_family(7, nonnegative=True):
        out = get_method(name)(make_input(J))
        assert out.projections == []
        assert torch.equal(out.weights, torch.ones_like(out.weights))


def test_pcgrad_with_two_tasks_is_permutation_equivariant():
    for J in jacobian_family(3, count=10):
        if len(J) == 2:
            weights = get_method("pcgrad")(make_input(J)).weights
            swapped = get_method("pcgrad")(make_input(J[::-1].copy())).weights
            assert torch.allclose(swapped, weights.flip(0), rtol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_matches_brute_force(reduction, seed):
    method = get_method("pcgrad", reduction=reduction, seed=seed)
    reference = torch.Generator().manual_seed(seed)
    family = jacobian_family(seed, count=8) + [np.vstack([J_PINNED, np.zeros((1, 3))])]
    for J in family:  # one method instance: the generator runs on across calls
        out = method(make_input(J))
        expected, expected_events = brute_pcgrad(J, reference, reduction)
        np.testing.assert_allclose(update(out.weights, J), expected, rtol=1e-9, atol=1e-9)
        assert_same_events(out.projections, expected_events)
        assert all(e.block is None for e in out.projections)


@pytest.mark.parametrize("seed", range(3))
def test_pcgrad_layerwise_matches_brute_force_per_block(seed):
    method = get_method("pcgrad_layerwise", seed=seed)
    reference = torch.Generator().manual_seed(seed)
    for J in jacobian_family(seed):
        out = method(make_input(J, num_blocks=3))
        expected, expected_events = [], []
        for b, J_b in enumerate(split_blocks(J, 3)):
            d_b, events_b = brute_pcgrad(J_b, reference)
            expected.append(d_b)
            expected_events += [(f"layer.{b}", *event) for event in events_b]
        np.testing.assert_allclose(update(out.weights, J), np.concatenate(expected), atol=1e-9)
        assert [e.block for e in out.projections] == [e[0] for e in expected_events]
        assert_same_events(out.projections, [e[1:] for e in expected_events])
