"""The public step on a tiny BERT: task_gradients rows and train_step against brute force."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_parts

from gradlab.build import build_method
from gradlab.engine import GradientEngine
from gradlab.methods import MethodInput
from gradlab.model import block_name
from gradlab.step import TaskLoss, task_gradients, train_step


def eval_parts(**changes):
    parts = tiny_parts(**changes)
    parts.model.eval()  # dropout off: brute force sees the same function
    return parts


def brute_force(model, batches, loss: TaskLoss):
    """Per pair: the shared-parameter gradient [P] (torch.autograd.grad, no engine) and the
    head gradients, each from its own forward and backward."""
    shared = [p for _, p in model.shared_parameters()]
    rows, heads = [], []
    for task, batch in batches:
        value, _ = loss(model, task, batch, smart=False)
        head = list(model.heads[task].parameters())
        grads = torch.autograd.grad(value, shared + head, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                               for p, g in zip(shared, grads, strict=False)]))
        heads.append(grads[len(shared):])
    return torch.stack(rows), heads


def engine_for(model, rows: int) -> GradientEngine:
    shared = model.shared_parameters()
    return GradientEngine([p for _, p in shared], [block_name(n) for n, _ in shared], rows)


def test_task_gradients_rows_equal_per_task_autograd_in_the_order_given():
    parts = eval_parts()
    # K = 2 batches of SST and one of STS, interleaved: one J row per pair, in order
    batches = [("sst", parts.batch("sst", next(parts.batchers["sst"]))),
               ("sts", parts.batch("sts", next(parts.batchers["sts"]))),
               ("sst", parts.batch("sst", next(parts.batchers["sst"])))]
    engine = engine_for(parts.model, rows=4)
    grads = task_gradients(parts.model, batches, engine, loss=parts.loss)
    expected, _ = brute_force(parts.model, batches, parts.loss)
    assert grads.fault is None and grads.tasks == ["sst", "sts", "sst"]
    torch.testing.assert_close(engine.jacobian[:3], expected, rtol=1e-5, atol=1e-7)
    assert not torch.equal(engine.jacobian[0], engine.jacobian[2])  # different SST batches
    # the block Gramians are float32 partial products summed in float64: each entry within a
    # float32 dot product's error of |g_a| |g_b| (an entry-relative bound fails for the small
    # off-diagonal entries on some CPUs: 2e-6 on an AVX2 machine)
    J = engine.jacobian[:3].double()
    exact = J @ J.T
    scale = exact.diagonal().sqrt()
    error = (grads.block_gramians.sum(0) - exact).abs()
    assert (error <= 1e-5 * torch.outer(scale, scale)).all(), error / torch.outer(scale, scale)
    assert grads.block_gramians.shape == (len(engine.blocks), 3, 3)
    losses = [parts.loss(parts.model, t, b, smart=False)[1] for t, b in batches]
    torch.testing.assert_close(grads.losses, torch.tensor(losses, dtype=torch.float64))


def test_views_are_still_the_grad_after_backward():
    parts = eval_parts()
    batches = [(t, parts.probe_batches[t]) for t in parts.tasks]
    task_gradients(parts.model, batches, parts.engine, loss=parts.loss)
    parts.engine.check_bound(len(batches) - 1)  # autograd accumulated into J in place
    last = parts.engine.jacobian[len(batches) - 1]
    for p in parts.engine.params:
        assert p.grad.untyped_storage().data_ptr() == last.untyped_storage().data_ptr()


def test_task_gradients_refuses_more_batches_than_rows():
    parts = eval_parts()
    batches = [(t, parts.probe_batches[t]) for t in parts.tasks] * 2
    with pytest.raises(ValueError, match=r"batches: expected 1 to 3 \(task, batch\) pairs"):
        task_gradients(parts.model, batches, parts.engine)


@pytest.mark.parametrize("method", ["sum", "pcgrad", "pcgrad_layerwise"])
def test_train_step_applies_the_method_to_the_brute_force_gramian(method):
    parts = eval_parts(method=method, max_grad_norm=None)
    twins = copy.deepcopy(parts.batchers)  # the batches train_step will draw
    batches = [(t, parts.batch(t, next(twins[t]))) for t in parts.tasks]
    J, heads = brute_force(parts.model, batches, parts.loss)
    result = train_step(parts, parts.tasks, step=0)
    assert result.fault is None and result.tasks == parts.tasks

    # the method, fresh with the run's seed, on the Gramian of the brute-force gradients
    engine = parts.engine
    blocks = torch.stack([(J[:, b.start:b.stop].double() @ J[:, b.start:b.stop].double().T)
                          for b in engine.blocks])
    # (the engine sums float32 partial products in float64: round-off ~1e-6 relative)
    torch.testing.assert_close(result.block_gramians, blocks, rtol=1e-5, atol=1e-7)
    expected = build_method(method, seed=0)(MethodInput(
        gramian=blocks.sum(0), block_gramians=blocks, block_names=engine.block_names,
        losses=result.losses, step=0)).weights
    torch.testing.assert_close(result.weights, expected, rtol=1e-5, atol=1e-7)

    # .grad holds the update wᵀJ (blockwise: w_bᵀ J_b) and each head its own task's gradient
    w = result.weights.float()
    update = torch.cat([w @ J[:, b.start:b.stop] if w.dim() == 1 else w[k] @ J[:, b.start:b.stop]
                        for k, b in enumerate(engine.blocks)])
    got = torch.cat([p.grad.reshape(-1) for p in engine.params])
    torch.testing.assert_close(got, update, rtol=1e-5, atol=1e-6)
    for task, head in zip(parts.tasks, heads, strict=True):
        for p, g in zip(parts.model.heads[task].parameters(), head, strict=True):
            torch.testing.assert_close(p.grad, g)
    all_grads = [p.grad for p in parts.model.parameters() if p.grad is not None]
    assert result.grad_norm == pytest.approx(float(torch.stack([g.norm() for g in all_grads])
                                                   .norm()))


def test_sum_step_equals_the_gradient_of_the_summed_loss():
    """Per-task gradients cost what the summed loss costs, and give the same update."""
    parts = eval_parts(max_grad_norm=None)
    twins = copy.deepcopy(parts.batchers)
    batches = {t: parts.batch(t, next(twins[t])) for t in parts.tasks}
    total = sum(parts.loss(parts.model, t, b, smart=False)[0] for t, b in batches.items())
    shared = [p for _, p in parts.model.shared_parameters()]
    expected = torch.autograd.grad(total, shared, allow_unused=True)
    train_step(parts, parts.tasks, step=0)
    for p, g in zip(shared, expected, strict=True):
        torch.testing.assert_close(p.grad, torch.zeros_like(p) if g is None else g,
                                   rtol=1e-5, atol=1e-6)


def test_a_single_task_step_is_its_own_update_and_leaves_other_heads_alone():
    parts = eval_parts(schedule="round_robin", method="pcgrad")
    positions = {t: b.state_dict()["position"] for t, b in parts.batchers.items()}
    result = train_step(parts, ["para"], step=1)
    assert result.fault is None and result.output is None
    assert result.weights.tolist() == [1.0] and result.block_gramians.shape[1:] == (1, 1)
    parts.engine.check_bound(0)  # .grad is J's row 0 itself, no copy
    assert all(p.grad is None for t in ("sst", "sts")
               for p in parts.model.heads[t].parameters())
    moved = {t: b.state_dict()["position"] - positions[t] for t, b in parts.batchers.items()}
    assert moved == {"sst": 0, "para": 4, "sts": 0}  # only the active task drew a batch


def test_train_step_clips_the_update():
    parts = eval_parts(max_grad_norm=1e-3)
    result = train_step(parts, parts.tasks, step=0)
    norm = torch.stack([p.grad.norm() for p in parts.model.parameters() if p.grad is not None])
    assert result.grad_norm > 1e-3  # the norm before clipping
    assert float(norm.norm()) == pytest.approx(1e-3, rel=1e-4)
