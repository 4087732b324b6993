"""The method contract (gradlab/methods/__init__.py, _base.py): registry, argument errors,
repr, docstrings and their examples, input checks, the output contract, and state that
round-trips through a checkpoint's safetensors + JSON and continues exactly."""

from __future__ import annotations

import doctest
import importlib
import inspect
import json
import pkgutil

import numpy as np
import pytest
import torch
from helpers_methods import ALL, J_PINNED, jacobian_family, make, make_input
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

import gradlab.methods as methods
from gradlab.methods import METHODS, MethodInput, get_method

# Constructor arguments that differ from every default, so a repr must show the given value.
NON_DEFAULT_ARGS = {
    "sum": {},
    "mean": {},
    "pcgrad": {"reduction": "mean", "seed": 3},
    "pcgrad_layerwise": {"reduction": "mean", "seed": 4},
    "mgda": {"epsilon": 1e-4, "max_iters": 50},
    "cagrad": {"c": 0.25},
    "imtl_g": {},
    "aligned_mtl": {"scale_mode": "median"},
    "upgrad": {},
    "dualproj": {},
    "nash_mtl": {"max_norm": 2.0, "update_weights_every": 3, "optim_niter": 5, "fallback": False},
    "random": {"seed": 7},
    "gradvac": {"beta": 0.1, "seed": 2, "eps": 1e-6},
    "uncertainty": {"lr": 0.1, "optimizer": "sgd"},
    "dwa": {"temperature": 1.0},
    "gradnorm": {"alpha": 0.5, "lr": 0.1, "optimizer": "sgd", "block": "layer.1"},
}


# ------------------------------------------------------------------------------------------
# Registry, errors, repr, docs


def test_registry_names_match_the_spec():
    assert ALL == sorted(NON_DEFAULT_ARGS)
    for name, cls in METHODS.items():
        assert cls.name == name
        assert cls.__name__ in methods.__all__
    for exported in methods.__all__:
        assert hasattr(methods, exported)


def test_one_private_module_per_method():
    """torchjd's layout: each method lives in a private module named after it."""
    for name, cls in METHODS.items():
        assert cls.__module__ == f"gradlab.methods._{name}"


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
        ("nash_mtl", {"fallback": "yes"}, TypeError, "fallback.*'yes'"),
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
def test_repr_shows_every_constructor_argument_with_its_value(name):
    kwargs = NON_DEFAULT_ARGS[name]
    cls = METHODS[name]
    signature = inspect.signature(cls)
    for key, value in kwargs.items():  # the table really differs from the defaults
        assert signature.parameters[key].default != value, (name, key)
    bound = signature.bind(**kwargs)
    bound.apply_defaults()
    expected = ", ".join(f"{key}={value!r}" for key, value in bound.arguments.items())
    method = make(name, **kwargs)
    assert repr(method) == f"{cls.__name__}({expected})"
    # and the repr is Python that builds the same method
    assert repr(eval(repr(method), vars(methods))) == repr(method)


def test_repr_examples():
    pcgrad = get_method("pcgrad", reduction="mean", seed=3)
    assert repr(pcgrad) == "PCGrad(reduction='mean', seed=3)"
    assert repr(get_method("dwa", temperature=1.0)) == "DWA(temperature=1.0)"
    assert repr(get_method("sum")) == "Sum()"


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
    with pytest.raises(TypeError, match="gramian must be a torch.Tensor.*ndarray"):
        get_method("mean")(MethodInput(gramian=np.eye(2)))


def test_block_methods_need_matching_block_gramians():
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
        with pytest.raises(ValueError, match=r"block_gramians must have shape \[B, 2, 2\]"):
            get_method(name)(MethodInput(gramian=inp.gramian, block_gramians=torch.eye(3)[None],
                                         block_names=("a",), losses=inp.losses))


def test_loss_methods_need_losses():
    for name in ("uncertainty", "dwa", "gradnorm"):
        inp = make_input(J_PINNED, num_blocks=1)
        inp.losses = None
        with pytest.raises(ValueError, match="losses"):
            get_method(name)(inp)
        inp.losses = torch.tensor([1.0, 2.0, 3.0])
        with pytest.raises(ValueError, match=r"losses must have shape \[2\].*\(3,\)"):
            get_method(name)(inp)


def test_stateful_methods_refuse_a_changed_task_count():
    for name in ("gradvac", "uncertainty", "dwa", "gradnorm"):
        method = get_method(name)
        method(make_input(np.eye(3), num_blocks=1))
        with pytest.raises(ValueError, match="reset"):
            method(make_input(np.eye(2), num_blocks=1))


# ------------------------------------------------------------------------------------------
# Output contract


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


# ------------------------------------------------------------------------------------------
# State


def _run(method, inputs):
    return [method(inp) for inp in inputs]


def _through_a_checkpoint(state: dict) -> dict:
    """The state as a checkpoint stores it: tensors in safetensors, the rest in JSON."""
    tensors = {key: value for key, value in state.items() if torch.is_tensor(value)}
    others = {key: value for key, value in state.items() if not torch.is_tensor(value)}
    return {**load_tensors(save_tensors(tensors)), **json.loads(json.dumps(others))}


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
    resumed.load_state_dict(_through_a_checkpoint(state))
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
