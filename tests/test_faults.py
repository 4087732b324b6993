"""Numeric faults: a NaN stops the run naming task, step and block (or is skipped and counted);
a zero or tiny task gradient never gives NaN weights or a crash in any method or statistic."""

from __future__ import annotations

import contextlib
import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import tiny_config, tiny_parts
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import gradlab
from gradlab import checkpoint as ckpt
from gradlab import stats
from gradlab.cli import main
from gradlab.methods import METHODS, MethodInput, get_method
from gradlab.step import train_step
from gradlab.training import NonFiniteError


def config(runs_dir, name: str, **changes) -> dict:
    return tiny_config(runs_dir, **{
        "name": name, "runs_dir": str(runs_dir), "train_limit": 32, "dev_limit": 16,
        "max_length": 24, "eval_batch_size": 16, "checkpoint_every": 2, **changes})


def train(values: dict, hook=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # truncation notices
        return gradlab.train(None, _after_step=hook, **values)


def encoder_param(model, block: str) -> torch.nn.Parameter:
    """The first shared parameter of a block ("layer.1" ...)."""
    from gradlab.model import block_name

    return next(p for n, p in model.shared_parameters() if block_name(n) == block)


def nan_head_after(step: int, task: str):
    def hook(done: int, model) -> None:
        if done == step:
            with torch.no_grad():
                next(model.heads[task].parameters()).fill_(math.nan)
    return hook


def poison(times: int):
    """A gradient hook: the next ``times`` backward passes through it give NaN."""
    left = [times]

    def hook(grad: torch.Tensor) -> torch.Tensor:
        if left[0] > 0:
            left[0] -= 1
            return grad * math.nan
        return grad
    return hook


def nan_gradient_after(step: int, block: str, times: int):
    """From the step after ``step`` on, the next ``times`` backward passes give block ``block``
    a NaN gradient (the first task's, as tasks run in order)."""
    def hook(done: int, model) -> None:
        if done == step:
            encoder_param(model, block).register_hook(poison(times))
    return hook


# --- one step: what train_step reports ---------------------------------------------------------


def test_nan_gradient_is_reported_naming_task_and_block():
    parts = tiny_parts()
    encoder_param(parts.model, "layer.1").register_hook(poison(1))
    result = train_step(parts, parts.tasks, step=3)
    assert result.fault == "non-finite gradient of task 'sst' in block 'layer.1'"
    assert result.weights is None and result.grad_norm is None  # no update was written
    assert train_step(parts, parts.tasks, step=4).fault is None  # the next step is clean


def test_nan_loss_is_reported_naming_the_task():
    parts = tiny_parts()
    with torch.no_grad():
        next(parts.model.heads["sts"].parameters()).fill_(math.nan)
    result = train_step(parts, parts.tasks, step=0)
    assert result.fault == "non-finite loss nan of task 'sts'"
    assert result.block_gramians is None and result.weights is None


def test_nan_head_gradient_is_reported():
    parts = tiny_parts()
    next(parts.model.heads["para"].parameters()).register_hook(poison(1))
    result = train_step(parts, parts.tasks, step=0)
    assert result.fault == "non-finite gradient in the task heads"
    assert math.isnan(result.grad_norm)


# --- nonfinite="error" ------------------------------------------------------------------------


def test_nan_loss_stops_naming_task_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    values = config(tmp_path, "nan-loss")
    with pytest.raises(NonFiniteError) as caught:
        train(values, nan_head_after(2, "sts"))
    message = str(caught.value)
    last = tmp_path / "nan-loss" / "checkpoints" / "last"
    assert "step 3: non-finite loss nan of task 'sts'" in message
    assert f"the last good checkpoint is kept: {last} (step 2)" in message
    assert ckpt.read_state(last)["step"] == 2
    assert all(torch.isfinite(t).all() for t in load_file(str(last / "model.safetensors"))
               .values())
    from gradlab import load_run

    run = load_run(tmp_path / "nan-loss")
    assert run.status == "failed"
    assert sorted(run.losses()["step"].unique()) == [0, 1, 2]  # nothing of the failed step


# --- nonfinite="skip" -------------------------------------------------------------------------


def test_skip_counts_skipped_steps_and_probes_in_the_store_and_the_handle(tmp_path):
    values = config(tmp_path, "skip", nonfinite="skip", probe_every=3, max_skipped_share=0.2)
    # seven NaN backward passes after step 2: the probe of step 3 (2 replicates of sst, para,
    # sts), then step 3's first task
    with pytest.warns(RuntimeWarning) as caught:
        handle = train(values, nan_gradient_after(2, "layer.0", times=7))
    messages = [str(w.message) for w in caught]
    assert ("step 3: probe: non-finite gradient of task 'sst' in block 'layer.0' -- probe "
            "skipped") in messages
    assert "step 3: non-finite gradient of task 'sst' in block 'layer.0' -- step skipped" \
        in messages
    assert handle.skipped_steps == 1
    run = handle.load()
    assert run.status == "finished"
    assert run.scalars("skipped")[["step", "value"]].values.tolist() == [[3, 1.0]]
    assert run.scalars("skipped_probe")[["step", "value"]].values.tolist() == [[3, 1.0]]
    assert 3 not in set(run.losses()["step"])  # a skipped step logs no loss, weight, Gramian
    assert sorted(run.losses()["step"].unique()) == [0, 1, 2, 4, 5]
    assert sorted(run.cosines(source="probe")["step"].unique()) == [0, 6]
    final = load_file(str(handle.path / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in final.values())
    assert ckpt.read_state(handle.path / "checkpoints" / "last")["skipped_steps"] == 1


def test_skip_cannot_save_a_broken_model(tmp_path):
    # NaN weights (not gradients) cannot be skipped away: the next checkpoint refuses them
    values = config(tmp_path, "broken", nonfinite="skip", probe_every=0, max_skipped_share=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(NonFiniteError, match=r"step 4: parameter 'heads.sts.*' is not "
                                                 r"finite; not saving it; the last good "
                                                 r"checkpoint is kept: .*\(step 2\)"):
            train(values, nan_head_after(2, "sts"))


@contextlib.contextmanager
def nan_embeddings():
    """Every training forward pass of the encoder's embeddings gives NaN (a global module
    hook: it reaches the model the real CLI builds; evaluation, in eval mode, stays finite)."""
    def hook(module, args, output):
        if type(module).__name__ == "BertEmbeddings" and module.training:
            return output * math.nan
        return None

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _cli_args(values: dict) -> list[str]:
    return [f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
            for k, v in values.items()]


def test_skip_stops_the_cli_once_more_than_the_budget_was_skipped(tmp_path, capsys):
    # before: a run that skipped every step exited 0
    values = config(tmp_path, "budget", nonfinite="skip", probe_every=0, steps=24)
    with nan_embeddings(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "step skipped" warnings
        assert main(["train", *_cli_args(values)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    last = tmp_path / "budget" / "checkpoints" / "last"
    assert lines == [
        "gradlab train: error: step 2: 3 of the run's 24 steps were skipped (non-finite loss "
        "or gradient; this one: non-finite loss nan of task 'sst'), more than "
        f"max_skipped_share=0.1 allows (2); the last good checkpoint is kept: {last} (step 2)"]
    run = gradlab.load_run(tmp_path / "budget")
    assert run.status == "failed"
    assert run.scalars("skipped")["step"].tolist() == [0, 1, 2]
    assert ckpt.read_state(last)["skipped_steps"] == 2


def test_skip_budget_of_one_never_stops(tmp_path, capsys):
    values = config(tmp_path, "no-budget", nonfinite="skip", probe_every=0, steps=6,
                    max_skipped_share=1)
    with nan_embeddings(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", *_cli_args(values)]) == 0
    assert gradlab.load_run(tmp_path / "no-budget").scalars("skipped")["step"].tolist() == \
        list(range(6))
    assert ckpt.read_state(tmp_path / "no-budget" / "checkpoints" / "last")[
        "skipped_steps"] == 6


def test_skip_budget_is_a_config_key_with_a_range():
    from gradlab.config import ConfigError, load_config

    assert load_config(None, ["max_skipped_share=0.25"]).max_skipped_share == 0.25
    for bad in ("1.5", "-0.1", ".nan", "true"):
        with pytest.raises(ConfigError, match="max_skipped_share="):
            load_config(None, [f"max_skipped_share={bad}"])


# --- zero and tiny task gradients -------------------------------------------------------------


def runnable_methods() -> list[str]:
    """Every registered method whose optional dependencies are installed here."""
    names = []
    for name in METHODS:
        try:
            get_method(name)
        except ImportError:
            continue
        names.append(name)
    return names


def _jacobian(kind: str, seed: int = 0, T: int = 3, B: int = 3, P: int = 12) -> torch.Tensor:
    J = torch.randn(B, T, P, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    if kind == "zero_task":
        J[:, 1] = 0.0
    elif kind == "tiny_task":
        J[:, 1] *= 1e-30
    elif kind == "subnormal_task":
        J[:, 1] = 1e-160  # its squared norm underflows to 0
    elif kind == "zero_in_one_block":
        J[0, 2] = 0.0
    elif kind == "all_zero":
        J[:] = 0.0
    elif kind == "identical":
        J[:, 2] = J[:, 0]
    elif kind == "opposite":
        J[:, 2] = -J[:, 0]
    return J  # [B, T, P]


KINDS = ["zero_task", "tiny_task", "subnormal_task", "zero_in_one_block", "all_zero",
         "identical", "opposite"]


def _method_inputs(J: torch.Tensor, steps: int = 4):
    block_gramians = torch.einsum("btp,bsp->bts", J, J)
    T = J.shape[1]
    for step in range(steps):
        losses = torch.linspace(0.5, 2.0, T, dtype=torch.float64) / (step + 1)
        yield MethodInput(gramian=block_gramians.sum(0), block_gramians=block_gramians,
                          block_names=tuple(f"b{i}" for i in range(J.shape[0])),
                          losses=losses, step=step)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", runnable_methods())
def test_no_method_gives_nan_weights_for_zero_or_tiny_gradients(name, kind):
    method = get_method(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no 0/0 hidden behind a NaN check
        for inp in _method_inputs(_jacobian(kind)):
            weights = method(inp).weights
            assert torch.isfinite(weights).all(), (name, kind, weights)


@pytest.mark.parametrize("name", runnable_methods())
def test_single_task_with_zero_gradient(name):
    method = get_method(name)
    for inp in _method_inputs(torch.zeros(2, 1, 5, dtype=torch.float64)):
        assert torch.isfinite(method(inp).weights).all()


_GRAMIAN_STATS = [stats.task_norms, stats.cosines, stats.conflict, stats.magnitude_similarity,
                  stats.curvature_bounding_measure, stats.condition_number]
_UPDATE_STATS = [stats.update_norm, stats.update_task_cosines, stats.update_mean_cosine,
                 stats.update_gramian]


def _check_statistics(G: np.ndarray) -> None:
    T = G.shape[-1]
    w = np.linspace(0.5, 1.5, T)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's divide/invalid warnings too
        # κ = sqrt(λmax/λmin) of a subnormal λmin overflows to inf: right, with a warning
        warnings.filterwarnings("ignore", "overflow encountered in divide", RuntimeWarning)
        for fn in _GRAMIAN_STATS:  # NaN where undefined; inf only for κ of a singular G
            out = np.asarray(fn(G))
            assert fn is stats.condition_number or not np.isinf(out).any(), fn.__name__
        for fn in _UPDATE_STATS:
            np.asarray(fn(G, w))
        assert np.isfinite(stats.predicted_loss_change(G, w, 1e-3)).all()
        for basis, extra in (("pair", {"pair": (0, T - 1)}), ("pca", {})):
            if T >= 2:
                xy, outside = stats.plane_coordinates(G, np.eye(T), basis=basis, **extra)
                assert not np.isinf(xy).any()  # NaN (documented) when the plane is undefined


@pytest.mark.parametrize("kind", KINDS)
def test_no_statistic_fails_on_zero_or_tiny_gradients(kind):
    J = _jacobian(kind).numpy()
    _check_statistics(np.einsum("btp,bsp->bts", J, J))  # [B, T, T], broadcast
    _check_statistics(J.sum(0) @ J.sum(0).T)


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 4), zero=st.integers(0, 3),
       scale=st.sampled_from([0.0, 1e-300, 1e-160, 1e-30, 1.0, 1e30]), seed=st.integers(0, 99))
def test_statistics_and_pcgrad_never_nan_for_scaled_or_zero_tasks(T, zero, scale, seed):
    J = np.random.default_rng(seed).normal(size=(T, 6))
    J[zero % T] *= scale
    G = J @ J.T
    _check_statistics(G)
    w = get_method("pcgrad", seed=seed)(MethodInput(gramian=torch.from_numpy(G))).weights
    assert torch.isfinite(w).all()
    cos = stats.cosines(G)
    norms = stats.task_norms(G)
    assert np.all(np.isnan(cos[norms <= 1e-12]))  # undefined, never a number from noise


class _NoSharedGradient(torch.nn.Module):
    """Wraps a pair head so its task's loss does not reach the shared encoder."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, *embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(*(e.detach() for e in embeddings))


@pytest.mark.parametrize("method", ["pcgrad", "mgda", "imtl_g", "gradnorm"])
def test_a_step_with_a_zero_task_gradient(method):
    parts = tiny_parts(method=method)
    parts.model.heads["para"] = _NoSharedGradient(parts.model.heads["para"])
    for step in range(3):  # stateful methods (gradnorm) see the zero gradient repeatedly
        result = train_step(parts, parts.tasks, step)
        assert result.fault is None and torch.isfinite(result.weights).all()
        para = torch.diagonal(result.block_gramians, dim1=1, dim2=2)[:, 1]
        assert (para == 0).all()  # PARA's gradient on the encoder is exactly zero
        assert math.isfinite(result.grad_norm)
        parts.optimizer.step()


def test_training_with_a_zero_task_gradient(tmp_path):
    def cut_para(done: int, model) -> None:
        if done == 0:  # from step 1 on, PARA's gradient on the encoder is exactly zero
            model.heads["para"] = _NoSharedGradient(model.heads["para"])

    values = config(tmp_path, "pcgrad", method="pcgrad", steps=4, save_checkpoints=False)
    handle = train(values, cut_para)
    run = handle.load()
    assert run.status == "finished" and handle.skipped_steps == 0
    norms = run.norms(source="train", blocks="encoder")
    assert (norms[(norms.task == "para") & (norms.step > 0)]["value"] == 0).all()
    weights = run.weights()
    assert np.isfinite(weights["value"]).all()
    cos = run.cosines(source="train", blocks="encoder")
    assert cos[(cos.step > 0) & cos.pair.str.contains("para")]["value"].isna().all()
    for accessor in ("conflicts", "magnitude_similarity", "curvature_measure",
                     "condition_number", "update_stats", "s_conflict", "projection_rate"):
        getattr(run, accessor)()  # no crash
