"""The loss-weighting methods (_uncertainty.py, _dwa.py, _gradnorm.py) against their formulas
run with autograd and torch.optim, pinned values, and their learned values' optimizer
(_learned.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_methods import jacobian_family, loss_family, make_input, split_blocks

from gradlab.methods import get_method


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_uncertainty_matches_autograd_and_torch_optim(optimizer):
    losses = loss_family(0, num_tasks=3, steps=6)
    method = get_method("uncertainty", lr=0.05, optimizer=optimizer)
    log_vars = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optim_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    reference = optim_cls([log_vars], lr=0.05)
    for step_losses in losses:
        weights = method(make_input(np.eye(3), losses=step_losses)).weights
        assert torch.allclose(weights, torch.exp(-log_vars.detach()), rtol=1e-12)
        objective = (torch.exp(-log_vars) * torch.tensor(step_losses) + log_vars).sum()
        reference.zero_grad()
        objective.backward()
        reference.step()
    assert torch.allclose(method.state_dict()["log_vars"], log_vars.detach(), rtol=1e-12)


def test_dwa_matches_its_formula():
    losses = loss_family(1, num_tasks=3, steps=5) + [np.zeros(3), np.ones(3), np.ones(3)]
    method = get_method("dwa", temperature=2.0)
    for t, step_losses in enumerate(losses):
        weights = method(make_input(np.eye(3), losses=step_losses)).weights.numpy()
        if t < 2:
            np.testing.assert_array_equal(weights, np.ones(3))
            continue
        ratios = losses[t - 1] / np.maximum(losses[t - 2], 1e-12)
        exponentials = np.exp((ratios - ratios.max()) / 2.0)  # stable softmax
        expected = 3 * exponentials / exponentials.sum()
        np.testing.assert_allclose(weights, expected, rtol=1e-12)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_gradnorm_matches_autograd_of_its_objective(optimizer):
    rng = np.random.default_rng(4)
    J = rng.normal(size=(3, 12)) * np.array([[0.5], [2.0], [1.0]])
    losses = loss_family(4, num_tasks=3, steps=8)
    alpha, lr = 1.5, 0.05
    method = get_method("gradnorm", alpha=alpha, lr=lr, optimizer=optimizer)
    last_block = split_blocks(J, 3)[-1]
    norms = torch.tensor(np.linalg.norm(last_block, axis=1))
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    optim_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    reference = optim_cls([w], lr=lr)
    initial = torch.tensor(losses[0])
    for step_losses in losses:
        out = method(make_input(J, losses=step_losses))
        assert torch.allclose(out.weights, w.detach(), rtol=1e-12)
        ratios = torch.tensor(step_losses) / initial
        weighted = w * norms
        target = (weighted.mean() * (ratios / ratios.mean()) ** alpha).detach()
        objective = (weighted - target).abs().sum()
        assert out.extras["gradnorm_loss"] == pytest.approx(objective.item())
        reference.zero_grad()
        objective.backward()
        reference.step()
        with torch.no_grad():
            w.clamp_(min=1e-6)
            w.mul_(3 / w.sum())
    assert float(out.weights.sum()) == pytest.approx(3.0)


# Pinned: the weights after five steps, recorded before the weights' optimizer moved to
# torch.optim (the SGD GradNorm run hits the floor of 1e-6 on task 0 before renormalising).
J_LOSS_WEIGHTING = np.array([[1.0, -2.0, 0.5, 3.0], [0.5, 1.0, -1.0, 0.2], [-1.0, 0.3, 2.0, 1.0]])
LOSSES_PINNED = [[2.0, 1.0, 0.5], [1.5, 0.9, 0.6], [1.0, 0.8, 0.7], [0.8, 0.7, 0.7],
                 [0.6, 0.65, 0.7]]


@pytest.mark.parametrize(
    ("name", "optimizer", "expected"),
    [
        ("gradnorm", "adam", [0.6082477671, 1.3913749674, 1.0003772655]),
        ("gradnorm", "sgd", [1.026005434e-06, 1.401407329, 1.598591645]),
        ("uncertainty", "adam", [0.7631901406, 1.284363211, 1.438303861]),
        ("uncertainty", "sgd", [0.9104898488, 1.058785123, 1.141545475]),
    ],
)
def test_loss_weighting_pinned_weights(name, optimizer, expected):
    method = get_method(name, lr=0.1, optimizer=optimizer)
    for losses in LOSSES_PINNED:
        out = method(make_input(J_LOSS_WEIGHTING, num_blocks=2, losses=np.array(losses)))
    np.testing.assert_allclose(out.weights.numpy(), expected, rtol=1e-9, atol=1e-10)
    assert method.state_dict()["steps"] == len(LOSSES_PINNED)


def test_gradnorm_block_argument():
    J = jacobian_family(0)[2]
    inp = make_input(J, num_blocks=3)
    by_name = get_method("gradnorm", block="layer.2")
    default = get_method("gradnorm")
    for _ in range(3):
        assert torch.equal(by_name(inp).weights, default(inp).weights)
    with pytest.raises(ValueError, match="'pooler'.*layer.0"):
        get_method("gradnorm", block="pooler")(inp)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_state_keeps_the_checkpoint_format(optimizer):
    """The keys checkpoints hold (unchanged since the hand-written Adam), SGD's moments zero."""
    inp = make_input(np.eye(3), losses=np.array([1.0, 0.5, 2.0]))
    gradnorm = get_method("gradnorm", optimizer=optimizer)
    uncertainty = get_method("uncertainty", optimizer=optimizer)
    for _ in range(2):
        gradnorm(inp), uncertainty(inp)
    states = gradnorm.state_dict(), uncertainty.state_dict()
    assert sorted(states[0]) == ["exp_avg", "exp_avg_sq", "initial_losses", "steps",
                                 "task_weights"]
    assert sorted(states[1]) == ["exp_avg", "exp_avg_sq", "log_vars", "steps"]
    for state in states:
        assert state["steps"] == 2
        moments_zero = not state["exp_avg"].any() and not state["exp_avg_sq"].any()
        assert moments_zero == (optimizer == "sgd")


def test_bad_learned_state_names_the_shapes():
    state = get_method("uncertainty").state_dict()  # {} before the first call
    assert state == {}
    bad = {"log_vars": torch.zeros(3), "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(3),
           "steps": 1}
    with pytest.raises(ValueError, match=r"uncertainty: state exp_avg, exp_avg_sq .*\[3\].*\[2\]"):
        get_method("uncertainty").load_state_dict(bad)
    with pytest.raises(ValueError, match=r"missing keys \['steps'\]"):
        get_method("gradnorm").load_state_dict({
            "task_weights": torch.ones(2), "initial_losses": torch.ones(2),
            "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)})
