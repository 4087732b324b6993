"""Tests of gradlab.methods: reusable property checks over seeded families of task Jacobians,
pinned values, brute-force vector implementations, state round trips and error messages.

Methods that need torchjd's optional solvers (cagrad, upgrad, dualproj, nash_mtl) are skipped
when those packages are not installed.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import math
import pkgutil

import numpy as np
import pytest
import torch
from torchjd import aggregation

import gradlab.methods as methods
from gradlab.methods import METHODS, MethodInput, get_method

ALL = sorted(METHODS)
SOLVER_METHODS = {"cagrad", "upgrad", "dualproj", "nash_mtl"}

# Where each property holds (the others are excluded on purpose, not forgotten):
# - no conflict -> same direction as the sum: sum, mean, pcgrad(_layerwise) (no projection),
#   upgrad and dualproj (the gradients are already in the dual cone), and the methods whose
#   first weights are all equal (gradvac's targets start at 0; uncertainty, dwa, gradnorm
#   start at w = 1). Not mgda, cagrad, imtl_g, aligned_mtl, nash_mtl, random: they reweight
#   non-conflicting gradients too (e.g. MGDA's minimum-norm point).
# - permuting the tasks permutes the weights: every deterministic method; not pcgrad
#   (T >= 3), gradvac (random task order) or random.
# - weights do not change when J is scaled: the geometric methods; not the loss-weighting ones
#   (they ignore J or, gradnorm, compare norms with a loss-based target) nor random. Not
#   nash_mtl: its exact solution scales as 1/scale, but torchjd's solver (as the official
#   code) fails at some scales and then keeps its previous iterate (see its docstring).
SAME_DIRECTION_AS_SUM = [
    "sum",
    "mean",
    "pcgrad",
    "pcgrad_layerwise",
    "upgrad",
    "dualproj",
    "gradvac",
    "uncertainty",
    "dwa",
    "gradnorm",
]
PERMUTATION_EQUIVARIANT = [
    "sum",
    "mean",
    "mgda",
    "cagrad",
    "imtl_g",
    "aligned_mtl",
    "upgrad",
    "dualproj",
    "nash_mtl",
    "uncertainty",
    "dwa",
    "gradnorm",
]
SCALE_INVARIANT = [
    "sum",
    "mean",
    "pcgrad",
    "pcgrad_layerwise",
    "gradvac",
    "mgda",
    "cagrad",
    "imtl_g",
    "aligned_mtl",
    "upgrad",
    "dualproj",
]
NORMALISED_AT_ONE_TASK = [
    "sum",
    "mean",
    "pcgrad",
    "pcgrad_layerwise",
    "mgda",
    "imtl_g",
    "aligned_mtl",
    "upgrad",
    "dualproj",
    "random",
    "gradvac",
    "uncertainty",
    "dwa",
    "gradnorm",
]
KWARGS = {"nash_mtl": {"max_norm": 0.0}}  # scale-free Nash-MTL for the property checks
SOLVER_ATOL = 1e-5  # convex solvers stop at ~1e-7 relative accuracy

# The pinned example of the PCGrad paper discussion (and torchjd's docs).
J_PINNED = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


# ------------------------------------------------------------------------------------------
# Helpers: building methods and inputs from explicit Jacobians


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


def assert_same_events(events, expected: list[tuple]) -> None:
    """ProjectionEvents equal (i, j, coefficient, cosine) tuples: pairs exactly, values closely."""
    assert [(e.i, e.j) for e in events] == [(i, j) for i, j, _, _ in expected]
    np.testing.assert_allclose(
        np.array([(e.coefficient, e.cosine) for e in events]).reshape(-1, 2),
        np.array([(c, cos) for _, _, c, cos in expected]).reshape(-1, 2),
        rtol=1e-9,
        atol=1e-12,
    )


# ------------------------------------------------------------------------------------------
# Brute-force references on explicit vectors


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


def brute_gradvac(J_blocks, phi_hat: np.ndarray, generator: torch.Generator, beta: float):
    """Algorithm 1 of Wang et al. per block on explicit vectors; updates phi_hat in place."""
    updates = []
    for b, Jb in enumerate(J_blocks):
        rows = []
        for i in range(len(Jb)):
            g = Jb[i].copy()
            for j in torch.randperm(len(Jb), generator=generator).tolist():
                if j == i:
                    continue
                norm_i, norm_j = np.linalg.norm(g), np.linalg.norm(Jb[j])
                phi, target = g @ Jb[j] / (norm_i * norm_j), phi_hat[b, i, j]
                if phi < target:
                    g = (
                        g
                        + norm_i
                        * (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2))
                        / (norm_j * math.sqrt(1 - target**2))
                        * Jb[j]
                    )
                phi_hat[b, i, j] = (1 - beta) * target + beta * phi
            rows.append(g)
        updates.append(np.sum(rows, axis=0))
    return np.concatenate(updates)


# ------------------------------------------------------------------------------------------
# Registry, errors, repr, docs


def test_registry_names_match_the_spec():
    assert ALL == sorted(
        [
            "sum",
            "mean",
            "pcgrad",
            "pcgrad_layerwise",
            "mgda",
            "cagrad",
            "imtl_g",
            "aligned_mtl",
            "upgrad",
            "dualproj",
            "nash_mtl",
            "random",
            "gradvac",
            "uncertainty",
            "dwa",
            "gradnorm",
        ]
    )
    for name, cls in METHODS.items():
        assert cls.name == name
        assert cls.__name__ in methods.__all__
    for exported in methods.__all__:
        assert hasattr(methods, exported)


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="'pcgard'.*'pcgrad'"):
        get_method("pcgard")


def test_unknown_argument_names_parameter_and_value():
    with pytest.raises(TypeError, match=r"pcgrad.*reduce='sum'.*\['reduction', 'seed'\]"):
        get_method("pcgrad", reduce="sum")


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "pattern"),
    [
        ("pcgrad", {"reduction": "max"}, ValueError, "reduction.*'max'"),
        ("pcgrad", {"seed": "0"}, TypeError, "seed.*'0'"),
        ("pcgrad_layerwise", {"seed": -1}, ValueError, "seed.*-1"),
        ("mgda", {"epsilon": 0.0}, ValueError, "epsilon.*0.0"),
        ("mgda", {"max_iters": 2.5}, TypeError, "max_iters.*2.5"),
        ("cagrad", {"c": -1.0}, ValueError, "c must.*-1.0"),
        ("aligned_mtl", {"scale_mode": "max"}, ValueError, "scale_mode.*'max'"),
        ("nash_mtl", {"update_weights_every": 0}, ValueError, "update_weights_every.*0"),
        ("random", {"seed": 1.5}, TypeError, "seed.*1.5"),
        ("gradvac", {"beta": 2.0}, ValueError, "beta.*2.0"),
        ("uncertainty", {"lr": 0.0}, ValueError, "lr.*0.0"),
        ("uncertainty", {"optimizer": "rmsprop"}, ValueError, "optimizer.*'rmsprop'"),
        ("dwa", {"temperature": -1.0}, ValueError, "temperature.*-1.0"),
        ("gradnorm", {"alpha": float("nan")}, ValueError, "alpha.*nan"),
        ("gradnorm", {"block": 3}, TypeError, "block.*3"),
    ],
)
def test_bad_argument_values_name_parameter_and_value(name, kwargs, error, pattern):
    try:
        with pytest.raises(error, match=pattern):
            get_method(name, **kwargs)
    except ImportError as missing:
        pytest.skip(str(missing))


@pytest.mark.parametrize("name", ALL)
def test_repr_shows_constructor_arguments(name):
    method = make(name)
    text = repr(method)
    assert text.startswith(f"{type(method).__name__}(")
    for parameter in inspect.signature(type(method)).parameters:
        assert f"{parameter}=" in text


def test_repr_shows_given_values():
    method = get_method("pcgrad", reduction="mean", seed=3)
    assert repr(method) == "PCGrad(reduction='mean', seed=3)"
    assert repr(get_method("dwa", temperature=1.0)) == "DWA(temperature=1.0)"


@pytest.mark.parametrize("name", ALL)
def test_docstring_has_role_shapes_paper_and_example(name):
    doc = inspect.getdoc(METHODS[name])
    assert "[T" in doc and "Example:" in doc and ">>>" in doc
    if name not in ("sum", "mean"):
        assert "arxiv.org" in doc or "openreview.net" in doc


def _docstring_examples():
    finder = doctest.DocTestFinder()
    modules = [methods] + [  # every module of the package, not only those defining a class
        importlib.import_module(f"gradlab.methods.{info.name}")
        for info in pkgutil.iter_modules(methods.__path__)
    ]
    seen = {}
    for module in modules:
        for test in finder.find(module):
            if test.examples:
                seen[test.name] = test
    return sorted(seen.values(), key=lambda test: test.name)


@pytest.mark.parametrize("example", _docstring_examples(), ids=lambda test: test.name)
def test_docstring_examples_run(example):
    owner = METHODS.get(getattr(example.globs.get(example.name.rsplit(".", 1)[-1]), "name", ""))
    for module in getattr(owner, "requires", ()):
        pytest.importorskip(module)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(example)
    assert runner.failures == 0, f"docstring example {example.name} failed (see output above)"


def test_missing_solver_raises_import_error_naming_packages(monkeypatch):
    real_import = importlib.import_module

    def without_quadprog(name, *args):
        if name == "quadprog":
            raise ImportError("No module named 'quadprog'")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_quadprog)
    with pytest.raises(ImportError, match=r"'upgrad'.*quadprog.*torchjd\[quadprog-projector\]"):
        get_method("upgrad")


# ------------------------------------------------------------------------------------------
# Input checks


def test_bad_gramian_is_rejected_with_its_shape():
    with pytest.raises(ValueError, match=r"gramian must have shape \[T, T\].*\(2, 3\)"):
        get_method("sum")(MethodInput(gramian=torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        get_method("pcgrad")(MethodInput(gramian=torch.tensor([[1.0, float("nan")], [0, 1]])))


def test_blockwise_methods_need_matching_block_gramians():
    inp = make_input(J_PINNED, num_blocks=1)
    for name in ("pcgrad_layerwise", "gradvac", "gradnorm"):
        with pytest.raises(ValueError, match="block_gramians"):
            get_method(name)(MethodInput(gramian=inp.gramian, losses=inp.losses))
        with pytest.raises(ValueError, match="block_names"):
            get_method(name)(
                MethodInput(
                    gramian=inp.gramian,
                    block_gramians=inp.block_gramians,
                    block_names=("a", "b"),
                    losses=inp.losses,
                )
            )


def test_loss_methods_need_losses():
    for name in ("uncertainty", "dwa", "gradnorm"):
        inp = make_input(J_PINNED, num_blocks=1)
        inp.losses = None
        with pytest.raises(ValueError, match="losses"):
            get_method(name)(inp)


def test_stateful_methods_refuse_a_changed_task_count():
    for name in ("gradvac", "uncertainty", "dwa", "gradnorm"):
        method = get_method(name)
        method(make_input(np.eye(3), num_blocks=1))
        with pytest.raises(ValueError, match="reset"):
            method(make_input(np.eye(2), num_blocks=1))


def test_gradnorm_block_argument():
    J = jacobian_family(0)[2]
    inp = make_input(J, num_blocks=3)
    by_name = get_method("gradnorm", block="layer.2")
    default = get_method("gradnorm")
    for _ in range(3):
        assert torch.equal(by_name(inp).weights, default(inp).weights)
    with pytest.raises(ValueError, match="'pooler'.*layer.0"):
        get_method("gradnorm", block="pooler")(inp)


# ------------------------------------------------------------------------------------------
# Properties over seeded families


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seed", range(3))
def test_output_contract(name, seed):
    """Shape [T] (or [B, T]), float64, finite, no autograd, the global RNG untouched."""
    method = make(name)
    for J in jacobian_family(seed):
        inp = make_input(J)
        inp.gramian.requires_grad_(True)
        rng_before = torch.get_rng_state()
        out = method(inp)
        assert torch.equal(torch.get_rng_state(), rng_before)
        expected = (3, len(J)) if method.blockwise else (len(J),)
        assert out.weights.shape == expected
        assert out.weights.dtype == torch.float64
        assert not out.weights.requires_grad
        assert torch.isfinite(out.weights).all()
        assert all(isinstance(v, float) for v in out.extras.values())
        method.reset()


@pytest.mark.parametrize("name", NORMALISED_AT_ONE_TASK)
def test_one_task_gets_weight_one(name):
    method = make(name)
    cases = [[[3.0, -1.0, 2.0]], [[0.0, 0.0, 0.0]]]
    if name == "imtl_g":  # torchjd's IMTL-G gives w = 0 when every gradient is 0 (d = 0 anyway)
        cases = cases[:1]
    for J in cases:
        weights = method(make_input(np.array(J), num_blocks=1)).weights
        assert torch.allclose(weights, torch.ones_like(weights), atol=SOLVER_ATOL)


@pytest.mark.parametrize("name", SAME_DIRECTION_AS_SUM)
@pytest.mark.parametrize("seed", range(3))
def test_no_conflict_gives_the_direction_of_the_sum(name, seed):
    for J in jacobian_family(seed, nonnegative=True):
        d = update(make(name)(make_input(J)).weights, J)
        assert cosine(d, J.sum(0)) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("name", ["pcgrad", "pcgrad_layerwise"])
def test_pcgrad_without_conflict_is_exactly_the_sum(name):
    for J in jacobian_family(7, nonnegative=True):
        out = get_method(name)(make_input(J))
        assert out.projections == []
        assert torch.equal(out.weights, torch.ones_like(out.weights))


@pytest.mark.parametrize("name", PERMUTATION_EQUIVARIANT)
@pytest.mark.parametrize("seed", range(2))
def test_permuting_tasks_permutes_weights(name, seed):
    rng = np.random.default_rng(seed)
    for J in jacobian_family(seed):
        perm = rng.permutation(len(J))
        losses = loss_family(seed, len(J), steps=3)
        method, permuted = make(name), make(name)
        for step_losses in losses:  # several steps: the stateful methods evolve too
            weights = method(make_input(J, losses=step_losses)).weights
            weights_p = permuted(make_input(J[perm], losses=step_losses[perm])).weights
            assert torch.allclose(weights_p, weights[perm], atol=SOLVER_ATOL, rtol=1e-5)


def test_pcgrad_with_two_tasks_is_permutation_equivariant():
    for J in jacobian_family(3, count=10):
        if len(J) == 2:
            weights = get_method("pcgrad")(make_input(J)).weights
            swapped = get_method("pcgrad")(make_input(J[::-1].copy())).weights
            assert torch.allclose(swapped, weights.flip(0), rtol=1e-12)


@pytest.mark.parametrize("name", SCALE_INVARIANT)
@pytest.mark.parametrize("scale", [1e-4, 1e3])
def test_weights_do_not_depend_on_the_scale_of_J(name, scale):
    for J in jacobian_family(5):
        weights = make(name)(make_input(J)).weights
        scaled = make(name)(make_input(scale * J)).weights
        assert torch.allclose(scaled, weights, atol=SOLVER_ATOL, rtol=1e-5)


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
# Pinned values


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


def test_mgda_pinned_two_task_min_norm():
    # Min-norm point of the segment [g_1, g_2]: w_1 = (G22 - G12) / (G11 + G22 - 2 G12).
    G = J_PINNED @ J_PINNED.T
    w1 = (G[1, 1] - G[0, 1]) / (G[0, 0] + G[1, 1] - 2 * G[0, 1])
    assert w1 == pytest.approx(0.6)
    weights = get_method("mgda")(make_input(J_PINNED)).weights
    assert weights.tolist() == pytest.approx([w1, 1 - w1], abs=1e-9)
    d = update(weights, J_PINNED)  # interior optimum: d·g_1 = d·g_2 = ‖d‖²
    assert d @ J_PINNED.T == pytest.approx([d @ d, d @ d])


def test_tiny_gradients_keep_upgrad_weights():
    """torchjd on the raw Gramian falls back to the mean once tr(G) < 1e-4; the adapter not."""
    upgrad = make("upgrad")
    tiny = 1e-3 * J_PINNED  # tr(G) = 5.6e-5
    weights = upgrad(make_input(tiny)).weights
    assert weights.tolist() == pytest.approx([1.1109, 0.7894], abs=1e-4)
    raw = aggregation.UPGradWeighting()(torch.tensor(tiny @ tiny.T))
    assert raw.tolist() == pytest.approx([0.5, 0.5])


# ------------------------------------------------------------------------------------------
# Brute force: PCGrad, layer-wise PCGrad, GradVac on explicit vectors


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


@pytest.mark.parametrize("beta", [0.01, 0.5])
@pytest.mark.parametrize("seed", range(3))
def test_gradvac_matches_brute_force(beta, seed):
    rng = np.random.default_rng(seed)
    num_tasks, num_blocks = 1 + seed + 2, 3  # T = 3, 4, 5
    method = get_method("gradvac", beta=beta, seed=seed)
    reference = torch.Generator().manual_seed(seed)
    phi_hat = np.zeros((num_blocks, num_tasks, num_tasks))
    corrections = 0
    for _ in range(6):  # several steps: the targets move away from 0
        J = rng.normal(size=(num_tasks, 12)) + 0.5  # mostly aligned, some conflicts
        out = method(make_input(J, num_blocks=num_blocks))
        expected = brute_gradvac(split_blocks(J, num_blocks), phi_hat, reference, beta)
        np.testing.assert_allclose(update(out.weights, J), expected, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(method.state_dict()["phi_hat"].numpy(), phi_hat, atol=1e-12)
        corrections += out.extras["corrections"]
    assert corrections > 0


def test_gradvac_first_step_equals_pcgrad():
    for seed, J in enumerate(jacobian_family(11)):
        inp = make_input(J, num_blocks=1)
        gradvac = get_method("gradvac", seed=seed)(inp).weights[0]
        pcgrad = get_method("pcgrad", seed=seed)(inp).weights
        assert torch.allclose(gradvac, pcgrad, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# torchjd adapters against torchjd called directly


TORCHJD_WEIGHTINGS = {
    "mgda": aggregation.MGDAWeighting,
    "cagrad": lambda: aggregation.CAGradWeighting(c=0.5),
    "imtl_g": aggregation.IMTLGWeighting,
    "aligned_mtl": aggregation.AlignedMTLWeighting,
    "upgrad": aggregation.UPGradWeighting,
    "dualproj": aggregation.DualProjWeighting,
}


@pytest.mark.parametrize("name", sorted(TORCHJD_WEIGHTINGS))
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.filterwarnings("ignore:.*not DPP")
def test_adapter_matches_torchjd(name, seed):
    method = make(name)
    for J in jacobian_family(seed):
        G = torch.tensor(J @ J.T)
        assert G.trace() >= 1e-4  # torchjd's own thresholds do not bite
        expected = TORCHJD_WEIGHTINGS[name]()(G)
        weights = method(make_input(J)).weights
        assert torch.allclose(weights, expected, atol=SOLVER_ATOL, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:.*not DPP")
def test_nash_mtl_matches_torchjd_on_the_jacobian():
    method = make("nash_mtl", max_norm=1.0, fallback=False)  # torchjd's answers, as they are
    for seed in range(2):
        family = [J for J in jacobian_family(seed, count=10) if len(J) == 3]
        reference = aggregation.NashMTL(n_tasks=3, max_norm=1.0)
        method.reset()
        for J in family:  # a sequence: the solver state carries over
            expected = reference.weighting(torch.tensor(J))
            weights = method(make_input(J)).weights
            assert torch.allclose(weights, expected, atol=SOLVER_ATOL, rtol=1e-4)


def test_nash_mtl_reports_failed_solves_and_falls_back_to_the_exact_solution():
    J = np.vstack([np.random.default_rng(0).normal(size=(2, 9)), np.zeros((1, 9))])
    out = make("nash_mtl", fallback=False)(make_input(J))  # a zero task: torchjd fails
    assert out.extras == {"solver_failed": 1.0}
    assert torch.isfinite(out.weights).all()
    out = make("nash_mtl", max_norm=0.0)(make_input(J))
    assert out.extras == {"solver_failed": 1.0, "fallback": 1.0}
    G = torch.tensor(J @ J.T)
    w = out.weights
    assert w[2] == 0  # the zero task takes no part
    np.testing.assert_allclose((w * (G @ w))[:2], 1.0, rtol=1e-9)
    out = make("nash_mtl")(make_input(J_PINNED))
    assert out.extras == {"solver_failed": 0.0, "fallback": 0.0}


@pytest.mark.filterwarnings("ignore:.*not DPP", "ignore:Solution may be inaccurate")
def test_nash_mtl_fallback_where_torchjd_fails_on_spread_norms():
    """Norms 0.01, 1 and 50 (a Gramian spanning 7 decades): torchjd's solves fail (each
    takes ~0.4 s of ECOS); those steps get the exact solution, the others stay torchjd's."""
    rng = np.random.default_rng(0)
    method, plain = make("nash_mtl", max_norm=0.0), make("nash_mtl", max_norm=0.0,
                                                         fallback=False)
    fell_back = 0
    for _ in range(4):
        J = rng.normal(size=(3, 200))
        J *= (np.array([0.01, 1.0, 50.0]) / np.linalg.norm(J, axis=1))[:, None]
        G = torch.tensor(J @ J.T)
        out = method(make_input(J))
        plain(make_input(J))
        if out.extras["fallback"]:
            fell_back += 1
            np.testing.assert_allclose(out.weights * (G @ out.weights), 1.0, rtol=1e-9)
        else:  # torchjd solved it: its answer, near the solution
            assert (out.weights * (G @ out.weights) - 1).abs().max() <= 1e-2
    assert fell_back > 0


def test_nash_bargaining_weights_brute_force_and_properties():
    from gradlab.methods._nash_bargaining import nash_bargaining_weights

    rng = np.random.default_rng(3)
    for num_tasks in (2, 3, 5):
        J = rng.normal(size=(num_tasks, 40)) * 10.0 ** rng.uniform(-3, 3, size=(num_tasks, 1))
        G = torch.tensor(J @ J.T)
        w = nash_bargaining_weights(G)
        np.testing.assert_allclose(w * (G @ w), 1.0, rtol=1e-9)  # Gα = 1/α
        # brute force: f(α) = ½αᵀGα - Σ log α is smallest at w among nearby positive points
        Gn = G.numpy()
        best = 0.5 * w.numpy() @ Gn @ w.numpy() - np.log(w.numpy()).sum()
        for _ in range(50):
            other = w.numpy() * np.exp(rng.normal(scale=0.05, size=num_tasks))
            assert 0.5 * other @ Gn @ other - np.log(other).sum() > best
        # scaling task 0's gradient by c scales its weight by 1/c (loss-scale invariance)
        S = np.diag([7.0] + [1.0] * (num_tasks - 1))
        w_scaled = nash_bargaining_weights(torch.tensor(S @ J @ J.T @ S))
        np.testing.assert_allclose(w_scaled.numpy(), w.numpy() / np.diag(S), rtol=1e-8)
        perm = rng.permutation(num_tasks)
        w_perm = nash_bargaining_weights(G[perm][:, perm])
        np.testing.assert_allclose(w_perm.numpy(), w.numpy()[perm], rtol=1e-8)
    # pinned: torchjd's (converged) answer on J_PINNED, and 1/‖g_i‖ for orthogonal gradients
    w = nash_bargaining_weights(torch.tensor(J_PINNED @ J_PINNED.T))
    np.testing.assert_allclose(w.numpy(), [0.5915, 0.4071], atol=5e-5)
    w = nash_bargaining_weights(torch.diag(torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64)))
    np.testing.assert_allclose(w.numpy(), [0.5, 1.0, 2.0], rtol=1e-12)
    g = rng.normal(size=6)
    assert nash_bargaining_weights(torch.tensor(np.outer([1, -1], [1, -1]) * (g @ g))) is None
    assert nash_bargaining_weights(torch.zeros(3, 3)) is None


def test_random_matches_torchjd_and_keeps_the_global_rng():
    method = get_method("random", seed=5)
    torch.manual_seed(5)
    eye = torch.eye(4, dtype=torch.float64)
    expected = [aggregation.RandomWeighting()(eye) for _ in range(3)]
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    weights = [method(MethodInput(gramian=torch.eye(4))).weights for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), rng_before)
    for got, want in zip(weights, expected, strict=True):
        assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------
# Loss-weighting methods against their formulas


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


# ------------------------------------------------------------------------------------------
# State


def _run(method, inputs):
    return [method(inp) for inp in inputs]


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_continues_exactly(name):
    rng = np.random.default_rng(0)
    inputs = [
        make_input(rng.normal(size=(3, 9)) + 0.3, losses=rng.uniform(0.2, 2.0, size=3))
        for _ in range(6)
    ]
    method = make(name)
    _run(method, inputs[:3])
    state = method.state_dict()
    for key, value in state.items():
        assert isinstance(value, torch.Tensor | int | float | str), (key, type(value))
    continued = _run(method, inputs[3:])

    resumed = make(name)
    resumed.load_state_dict(state)
    for a, b in zip(continued, _run(resumed, inputs[3:]), strict=True):
        assert torch.equal(a.weights, b.weights)
        assert a.projections == b.projections
        assert a.extras == b.extras

    # The saved state was a copy, and reset() forgets everything.
    resumed.load_state_dict(state)
    assert torch.equal(resumed(inputs[3]).weights, continued[0].weights)
    resumed.reset()
    assert torch.equal(resumed(inputs[0]).weights, make(name)(inputs[0]).weights)


def test_bad_state_is_rejected_with_its_keys():
    with pytest.raises(ValueError, match=r"missing keys \['generator'\].*\['rng'\]"):
        get_method("pcgrad").load_state_dict({"rng": torch.zeros(3)})
    with pytest.raises(ValueError, match="stateless"):
        get_method("sum").load_state_dict({"x": 1})
    with pytest.raises(TypeError, match="uint8"):
        get_method("gradvac").load_state_dict({"generator": torch.zeros(3)})
