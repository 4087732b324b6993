"""Shared pieces of the method tests (tests/test_methods_*.py).

Inputs come from explicit Jacobians J [T, P] so that every expectation can be checked on the
vectors themselves: ``make_input(J)`` gives what the engine would hand a method, ``update(w, J)``
what it would write. ``jacobian_family(seed)`` is a seeded family of Jacobians with 1..5 tasks
and norms spread over two decades. The ``assert_*`` functions are reusable property checks:
each checks one property of one method on one Jacobian, and the test modules run them over
the families for the methods where the property holds.

Methods that need torchjd's optional solvers (cagrad, upgrad, dualproj, nash_mtl) are skipped
by ``make`` when those packages are not installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradlab.methods import METHODS, MethodInput, get_method

ALL = sorted(METHODS)
KWARGS = {"nash_mtl": {"max_norm": 0.0}}  # scale-free Nash-MTL for the property checks
SOLVER_ATOL = 1e-5  # convex solvers stop at ~1e-7 relative accuracy

# The pinned example of the PCGrad paper discussion (and torchjd's docs).
J_PINNED = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


# ------------------------------------------------------------------------------------------
# Building methods and inputs from explicit Jacobians


def make(name: str, **kwargs):
    """get_method, skipping the test when the method's optional solver is not installed."""
    try:
        return get_method(name, **{**KWARGS.get(name, {}), **kwargs})
    except ImportError as error:
        pytest.skip(f"{name}: {error}")


def split_blocks(J: np.ndarray, num_blocks: int) -> list[np.ndarray]:
    """Column blocks of J (as the encoder's parameter blocks), at least one column each."""
    return np.array_split(J, num_blocks, axis=1)


def make_input(J: np.ndarray, num_blocks: int = 3, losses=None) -> MethodInput:
    """Everything a method may read, from an explicit Jacobian J [T, P]."""
    blocks = split_blocks(J, num_blocks)
    block_gramians = torch.tensor(np.stack([b @ b.T for b in blocks]))
    if losses is None:
        losses = 1.0 + np.arange(J.shape[0]) / 4.0
    return MethodInput(
        gramian=torch.tensor(J @ J.T),
        block_gramians=block_gramians,
        block_names=tuple(f"layer.{b}" for b in range(num_blocks)),
        losses=torch.tensor(losses, dtype=torch.float64),
    )


def jacobian_family(seed: int, count: int = 6, nonnegative: bool = False) -> list[np.ndarray]:
    """Seeded random Jacobians with T = 1..5 tasks, 6..12 parameters, norms spread over 1e±1."""
    rng = np.random.default_rng(seed)
    family = []
    for k in range(count):
        num_tasks = 1 + (k + seed) % 5
        J = rng.normal(size=(num_tasks, int(rng.integers(6, 13))))
        J *= 10.0 ** rng.uniform(-1, 1, size=(num_tasks, 1))
        family.append(np.abs(J) if nonnegative else J)
    return family


def loss_family(seed: int, num_tasks: int, steps: int) -> list[np.ndarray]:
    """``steps`` seeded loss vectors [T] in [0.2, 2]."""
    rng = np.random.default_rng(seed + 1000)
    return [rng.uniform(0.2, 2.0, size=num_tasks) for _ in range(steps)]


def update(weights: torch.Tensor, J: np.ndarray, num_blocks: int = 3) -> np.ndarray:
    """The engine's update: wᵀJ, or per block w_bᵀ J_b concatenated."""
    w = weights.numpy()
    if w.ndim == 1:
        return w @ J
    blocks = split_blocks(J, num_blocks)
    return np.concatenate([w_b @ J_b for w_b, J_b in zip(w, blocks, strict=True)])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------------
# Reusable property checks: one method, one Jacobian


def assert_no_conflict_gives_the_sum_direction(name: str, J: np.ndarray) -> None:
    """For gradients without conflict (J >= 0 here), the update points along Σ_i g_i."""
    d = update(make(name)(make_input(J)).weights, J)
    assert cosine(d, J.sum(0)) == pytest.approx(1.0, abs=1e-9), (name, J.shape)


def assert_permutation_equivariant(name: str, J: np.ndarray, perm: np.ndarray,
                                   losses: list[np.ndarray]) -> None:
    """Permuting the tasks (rows of J and the losses) permutes the weights, at every step of
    a sequence (so a stateful method's state must follow the permutation too)."""
    method, permuted = make(name), make(name)
    for step_losses in losses:
        weights = method(make_input(J, losses=step_losses)).weights
        weights_p = permuted(make_input(J[perm], losses=step_losses[perm])).weights
        assert torch.allclose(weights_p, weights[perm], atol=SOLVER_ATOL, rtol=1e-5), name


def assert_scale_invariant(name: str, J: np.ndarray, scale: float) -> None:
    """Scaling every gradient by ``scale`` leaves the weights unchanged."""
    weights = make(name)(make_input(J)).weights
    scaled = make(name)(make_input(scale * J)).weights
    assert torch.allclose(scaled, weights, atol=SOLVER_ATOL, rtol=1e-5), (name, scale)


def assert_non_conflicting(name: str, J: np.ndarray, tol: float = SOLVER_ATOL) -> None:
    """The update conflicts with no task: cos(g_i, d) >= -tol for every i."""
    d = update(make(name)(make_input(J)).weights, J)
    cosines = J @ d / (np.linalg.norm(J, axis=1) * np.linalg.norm(d))
    assert (cosines >= -tol).all(), (name, cosines)


def assert_one_task_gets_weight_one(name: str, J: np.ndarray) -> None:
    """With one task the update is that task's gradient: w = [1]."""
    weights = make(name)(make_input(J, num_blocks=1)).weights
    assert torch.allclose(weights, torch.ones_like(weights), atol=SOLVER_ATOL), (name, weights)
