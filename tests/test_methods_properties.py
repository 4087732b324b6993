"""Properties of the methods, each checked over seeded families of Jacobians for every method
where it holds, plus every method's weights pinned on one fixed input.

Where each property holds (the others are excluded on purpose, not forgotten):

- no conflict -> same direction as the sum: sum, mean, pcgrad(_layerwise) (no projection),
  upgrad and dualproj (the gradients are already in the dual cone), and the methods whose
  first weights are all equal (gradvac's targets start at 0; uncertainty, dwa, gradnorm
  start at w = 1). Not mgda, cagrad, imtl_g, aligned_mtl, nash_mtl, random: they reweight
  non-conflicting gradients too (e.g. MGDA's minimum-norm point).
- permuting the tasks permutes the weights: every deterministic method; not pcgrad
  (T >= 3), gradvac (random task order) or random.
- weights do not change when J is scaled: the geometric methods; not the loss-weighting ones
  (they ignore J or, gradnorm, compare norms with a loss-based target) nor random. Not
  nash_mtl: its exact solution scales as 1/scale, but torchjd's solver (as the official
  code) fails at some scales and then keeps its previous iterate (see its docstring).
- the update conflicts with no task: mgda (g_i·d >= ‖d‖²), imtl_g (equal projections on the
  unit gradients), nash_mtl (α_i (Gα)_i = 1 > 0); upgrad and dualproj only up to torchjd's
  regularisation of the Gramian (checked on gradients of equal norms, see
  test_methods_torchjd.py for what it does to spread norms).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_methods import (
    ALL,
    SOLVER_ATOL,
    assert_no_conflict_gives_the_sum_direction,
    assert_non_conflicting,
    assert_one_task_gets_weight_one,
    assert_permutation_equivariant,
    assert_scale_invariant,
    jacobian_family,
    loss_family,
    make,
    make_input,
)

SAME_DIRECTION_AS_SUM = ["sum", "mean", "pcgrad", "pcgrad_layerwise", "upgrad", "dualproj",
                         "gradvac", "uncertainty", "dwa", "gradnorm"]
PERMUTATION_EQUIVARIANT = ["sum", "mean", "mgda", "cagrad", "imtl_g", "aligned_mtl", "upgrad",
                           "dualproj", "nash_mtl", "uncertainty", "dwa", "gradnorm"]
SCALE_INVARIANT = ["sum", "mean", "pcgrad", "pcgrad_layerwise", "gradvac", "mgda", "cagrad",
                   "imtl_g", "aligned_mtl", "upgrad", "dualproj"]
NON_CONFLICTING = ["mgda", "imtl_g", "nash_mtl"]
NON_CONFLICTING_UP_TO_REGULARISATION = ["upgrad", "dualproj"]
NORMALISED_AT_ONE_TASK = ["sum", "mean", "pcgrad", "pcgrad_layerwise", "mgda", "imtl_g",
                          "aligned_mtl", "upgrad", "dualproj", "random", "gradvac",
                          "uncertainty", "dwa", "gradnorm"]


@pytest.mark.parametrize("name", SAME_DIRECTION_AS_SUM)
@pytest.mark.parametrize("seed", range(3))
def test_no_conflict_gives_the_direction_of_the_sum(name, seed):
    for J in jacobian_family(seed, nonnegative=True):
        assert_no_conflict_gives_the_sum_direction(name, J)


@pytest.mark.parametrize("name", PERMUTATION_EQUIVARIANT)
@pytest.mark.parametrize("seed", range(2))
def test_permuting_tasks_permutes_weights(name, seed):
    rng = np.random.default_rng(seed)
    for J in jacobian_family(seed):
        perm = rng.permutation(len(J))
        # several steps: the stateful methods' state must follow the permutation too
        assert_permutation_equivariant(name, J, perm, loss_family(seed, len(J), steps=3))


@pytest.mark.parametrize("name", SCALE_INVARIANT)
@pytest.mark.parametrize("scale", [1e-4, 1e3])
def test_weights_do_not_depend_on_the_scale_of_J(name, scale):
    for J in jacobian_family(5):
        assert_scale_invariant(name, J, scale)


@pytest.mark.parametrize("name", NON_CONFLICTING)
@pytest.mark.parametrize("seed", range(3))
def test_update_conflicts_with_no_task(name, seed):
    for J in jacobian_family(seed):
        assert_non_conflicting(name, J)


@pytest.mark.parametrize("name", NON_CONFLICTING_UP_TO_REGULARISATION)
@pytest.mark.parametrize("seed", range(3))
def test_update_conflicts_with_no_task_of_equal_norm(name, seed):
    """torchjd adds 1e-4 to the diagonal of the trace-normalised Gramian before projecting,
    so the projection is onto a slightly different cone: cosines down to -3.4e-4 measured."""
    for J in jacobian_family(seed):
        assert_non_conflicting(name, J / np.linalg.norm(J, axis=1, keepdims=True), tol=1e-3)


@pytest.mark.parametrize("name", NORMALISED_AT_ONE_TASK)
def test_one_task_gets_weight_one(name):
    assert_one_task_gets_weight_one(name, np.array([[3.0, -1.0, 2.0]]))
    if name != "imtl_g":  # torchjd's IMTL-G gives w = 0 when every gradient is 0 (d = 0 anyway)
        assert_one_task_gets_weight_one(name, np.zeros((1, 3)))


@pytest.mark.parametrize("name", ALL)
def test_zero_and_tiny_gradients_give_finite_weights(name):
    rng = np.random.default_rng(0)
    g = rng.normal(size=(3, 9))
    cases = {
        "all zero": np.zeros((3, 9)),
        "tiny": 1e-30 * g,
        "one zero task": np.vstack([g[:2], np.zeros((1, 9))]),
        "duplicate tasks": np.vstack([g[:2], g[:1]]),
        "opposite tasks": np.vstack([g[:1], -g[:1], g[2:]]),
        "one zero block": np.hstack([np.zeros((3, 3)), g[:, 3:]]),
    }
    for case, J in cases.items():
        method = make(name)
        for losses in ([1.0, 0.5, 2.0], [0.0, 0.0, 0.0], [1.0, 0.5, 2.0]):
            weights = method(make_input(J, losses=np.array(losses))).weights
            assert torch.isfinite(weights).all(), (case, weights)


# ------------------------------------------------------------------------------------------
# Every method pinned on one input with three tasks that partly conflict (G_01, G_12 < 0):
# the weights of the first call and, for the stateful methods, of the third.

J_THREE = np.array([[1.0, -2.0, 0.5, 3.0, 0.0, 1.0],
                    [0.5, 1.0, -1.0, 0.2, 2.0, -0.5],
                    [-1.0, 0.3, 2.0, 1.0, -0.4, 0.8]])
LOSSES_THREE = [[1.0, 1.25, 1.5], [0.9, 1.3, 1.2], [0.8, 1.2, 1.3]]
GRADVAC_FIRST = [[1.7267155963, 2.5948623853, 2.6513761468], [1.0, 2.7307692308, 1.36],
                 [1.5, 1.4, 2.0]]
PINNED = {  # name: (first weights, third weights or None when the method keeps no state)
    "sum": ([1.0, 1.0, 1.0], None),
    "mean": ([1 / 3, 1 / 3, 1 / 3], None),
    "pcgrad": ([1.0271336458, 1.7798165138, 1.4644412192],
               [1.1245901639, 1.7798165138, 1.4065764115]),
    "pcgrad_layerwise": (GRADVAC_FIRST, [[1.6787155963, 2.744, 2.871559633],
                                         [1.0, 2.7307692308, 1.36], [1.0, 1.4, 2.5]]),
    "gradvac": (GRADVAC_FIRST, [[1.6672477519, 2.7047313392, 2.8577531874],
                                [1.0, 2.70962109, 1.3556011867],
                                [1.0, 1.3934622121, 2.4808620311]]),
    "mgda": ([0.0814993756, 0.4880782066, 0.4304224178], None),
    "cagrad": ([0.3333333379, 0.7030842346, 0.5101549034], None),
    "imtl_g": ([0.1348069, 0.4727977004, 0.3923953996], None),
    "aligned_mtl": ([0.1447671517, 0.3414972692, 0.3035543506], None),
    "upgrad": ([0.3433669457, 0.5931582297, 0.4834245736], None),
    "dualproj": ([1 / 3, 1 / 3, 1 / 3], None),  # the mean is already in the dual cone here
    "nash_mtl": ([0.1403596311, 0.3274048235, 0.2676364577],
                 [0.1403596311, 0.3274048235, 0.2676364577]),
    "random": ([0.8446342079, 0.1348925627, 0.0204732295],
               [0.3484443079, 0.5381610677, 0.1133946244]),
    "uncertainty": ([1.0, 1.0, 1.0], [1.007469123, 0.9801867519, 0.9812852643]),
    "dwa": ([1.0, 1.0, 1.0], [0.9921495815, 1.0640885431, 0.9437618754]),
    "gradnorm": ([1.0, 1.0, 1.0], [1.0132669616, 0.9734660767, 1.0132669616]),
}
SOLVED = {"mgda", "cagrad", "upgrad", "dualproj", "nash_mtl"}  # iterative or convex solvers


def test_pinned_table_covers_every_method():
    assert sorted(PINNED) == ALL


@pytest.mark.parametrize("name", sorted(PINNED))
@pytest.mark.filterwarnings("ignore:.*not DPP")
def test_pinned_weights(name):
    first, third = PINNED[name]
    method = make(name, **({"max_norm": 1.0} if name == "nash_mtl" else {}))  # the default
    outputs = [method(make_input(J_THREE, losses=losses)) for losses in LOSSES_THREE]
    tolerance = {"atol": SOLVER_ATOL} if name in SOLVED else {"atol": 1e-9, "rtol": 1e-9}
    np.testing.assert_allclose(outputs[0].weights.numpy(), first, **tolerance)
    np.testing.assert_allclose(outputs[2].weights.numpy(), third or first, **tolerance)
