"""Replicate probes (issue 13 items 1 and 3): K batches per task, the [K*T, K*T] Gramians in
the store, and the calibrated Run accessors on them."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config, tiny_parts

import gradlab
from gradlab.build import build_parts
from gradlab.calibration import pair_frame, task_frame
from gradlab.config import load_config
from gradlab.probe import probe, probe_batch, probe_indices, probe_inputs
from gradlab.runs import ACCESSORS, load_runs
from gradlab.store import StoreReader


def _train(tmp_path, name, **changes):
    cfg = tiny_config(tmp_path, **{"name": name, "steps": 4, "probe_every": 1,
                                   "train_limit": 32, "max_length": 24,
                                   "save_checkpoints": False, **changes})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # truncation notices
        gradlab.train(None, **cfg)
    return tmp_path / "runs" / name, cfg


def _brute_force_gramians(parts, batches):
    """[B, n, n]: per-block dot products of gradients from one autograd.grad call each."""
    shared = parts.model.shared_parameters()
    params = [p for _, p in shared]
    names = parts.engine.block_names
    grads = []
    parts.model.eval()
    for task, batch in batches:
        loss = parts.loss(parts.model, task, batch, smart=False)[0]
        grads.append(torch.autograd.grad(loss, params, allow_unused=True))
    out = np.zeros((len(names), len(batches), len(batches)))
    for b, block in enumerate(names):
        idx = [k for k, (n, _) in enumerate(shared) if _block(parts, n) == block]
        flat = torch.stack([torch.cat([(g[k] if g[k] is not None else torch.zeros_like(params[k]))
                                       .reshape(-1).double() for k in idx]) for g in grads])
        out[b] = (flat @ flat.T).numpy()
    return out


def _block(parts, name):
    from gradlab.model import block_name

    return block_name(name)


@pytest.mark.parametrize("K", [2, 3])
def test_stored_replicate_gramians_equal_brute_force_autograd(tmp_path, K):
    run_dir, cfg = _train(tmp_path, f"k{K}", probe_replicates=K)
    series = StoreReader(run_dir).replicate_gramians(["encoder", "layer.0"])
    T = len(cfg.get("tasks", ["sst", "para", "sts"]))
    assert {s.block for s in series} == {"encoder", "layer.0"}
    for s in series:
        assert s.replicates == K and s.G.shape == (5, K * T, K * T)
        assert s.steps.tolist() == [0, 1, 2, 3, 4]
    # the probe at step 0 sees the model as built: rebuild it and differentiate batch by batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        parts = build_parts(load_config(None, cfg))
    batches = probe_inputs(parts, 0)
    assert [t for t, _ in batches] == parts.tasks * K  # replicate-major
    brute = _brute_force_gramians(parts, batches)
    names = list(parts.engine.block_names)
    by_block = {s.block: s.G[0] for s in series}
    # float32 gradients: entries agree to float32 precision of the largest squared norm
    for got, want in ((by_block["layer.0"], brute[names.index("layer.0")]),
                      (by_block["encoder"], brute.sum(0))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
        assert not np.allclose(got, 0)
    # the ordinary probe rows are replicate 0's [T, T] block
    run = gradlab.load_run(run_dir)
    tasks, G_probe = run.gramian(0, source="probe", block="encoder")
    assert tasks == parts.tasks
    np.testing.assert_allclose(G_probe, by_block["encoder"][:T, :T], rtol=1e-12)
    assert len(run.cosines(source="probe")) > 0  # existing accessors still read them


def test_probe_result_holds_replicates_and_counterfactuals_use_replicate_zero():
    parts = tiny_parts(probe_replicates=3)
    T = len(parts.tasks)
    result = probe(parts, step=5, lr=1e-3)
    assert result.fault is None and result.replicates == 3
    assert result.replicate_gramians.shape == (len(parts.engine.blocks), 3 * T, 3 * T)
    torch.testing.assert_close(result.block_gramians, result.replicate_gramians[:, :T, :T])
    torch.testing.assert_close(result.losses, result.replicate_losses[:T])
    w, predicted, _ = result.counterfactuals["sum"]
    torch.testing.assert_close(predicted, -1e-3 * result.block_gramians.sum(0) @ w)
    assert parts.probe_engine is not None and parts.probe_engine.num_tasks == 3 * T
    engine = parts.probe_engine
    probe(parts, step=6, lr=1e-3)
    assert parts.probe_engine is engine  # allocated once
    # K = 1 uses the training engine, no second buffer
    single = tiny_parts(probe_replicates=1)
    assert probe(single, step=5, lr=1e-3).replicate_gramians.shape[-1] == T
    assert single.probe_engine is None


def test_same_seed_same_probe_batches_across_methods_and_schedules():
    a = tiny_parts(method="sum")
    b = tiny_parts(method="pcgrad", schedule="round_robin")
    for step in (0, 7):
        for (ta, xa), (tb, xb) in zip(probe_inputs(a, step), probe_inputs(b, step), strict=True):
            assert ta == tb and all(torch.equal(xa[k], xb[k]) for k in xa)
    other_seed = tiny_parts(seed=1)
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for (_, x), (_, y) in
                   zip(probe_inputs(a, 7), probe_inputs(other_seed, 7), strict=True))


def test_probe_batches_differ_between_steps_and_replicates():
    parts = tiny_parts(probe_replicates=2)
    n = len(parts.train_sets["sst"].tokenized)
    index = {(s, a): probe_indices(n, 4, 0, s, "sst", a) for s in (0, 25, 50) for a in (0, 1)}
    assert len({tuple(v.tolist()) for v in index.values()}) == len(index)
    batch = probe_batch(parts, 25, "sst", 1)
    expected = parts.batch("sst", index[(25, 1)])
    assert all(torch.equal(batch[k], expected[k]) for k in expected)
    assert not torch.equal(probe_batch(parts, 25, "sst", 0)["input_ids"], batch["input_ids"])


@pytest.mark.parametrize(("changes", "rows"), [({"batch_size": 6, "probe_batch_size": None}, 6),
                                             ({"batch_size": 6, "probe_batch_size": 3}, 3)])
def test_probe_batches_are_training_batch_sized_unless_set(changes, rows):
    parts = tiny_parts(**changes)
    assert {len(batch["labels"]) for _, batch in probe_inputs(parts, 2)} == {rows}


def test_a_run_without_probe_batch_size_calibrates_at_its_batch_size(tmp_path):
    run_dir, cfg = _train(tmp_path, "b3", batch_size=3, probe_batch_size=None)
    run = gradlab.load_run(run_dir)
    assert run.config["probe_batch_size"] is None
    noise = run.noise_scale(window=None)  # B_noise in examples: it scales with the batch size
    pd.testing.assert_frame_equal(noise, run.noise_scale(window=None, batch_size=3))
    assert not noise.equals(run.noise_scale(window=None, batch_size=16))


def test_accessors_equal_calibration_on_the_stored_gramians(tmp_path):
    run_dir, cfg = _train(tmp_path, "acc", probe_replicates=2)
    run = gradlab.load_run(run_dir)
    (series,) = StoreReader(run_dir).replicate_gramians(["encoder"])
    tasks = run.tasks
    got = run.expected_cosines(window=3, blocks="encoder")
    assert sorted(got["step"].unique()) == [0, 1, 2, 3, 4]
    last = got[got["step"] == 4].reset_index(drop=True)
    assert (last["first_step"] == 2).all()
    want = pair_frame(series.G[2:5], tasks)
    want = want[want["quantity"] == "expected_cos"].reset_index(drop=True)
    assert last["pair"].tolist() == want["pair"].tolist()
    for col in ("estimate", "lo", "hi"):
        np.testing.assert_allclose(last[col], want[col], equal_nan=True)
    assert last["n"].tolist() == [6, 6, 6] and last["reason"].tolist() == want["reason"].tolist()
    within = run.within_task_cosines(window=None, blocks="encoder")
    want = task_frame(series.G, tasks, batch_size=cfg["probe_batch_size"])
    for quantity, frame in (("within_cos", within),
                            ("b_noise", run.noise_scale(window=None, blocks="encoder"))):
        w = want[want["quantity"] == quantity].reset_index(drop=True)
        assert frame["task"].tolist() == tasks and (frame["step"] == 4).all()
        assert (frame["n"] == 10).all()
        for col in ("estimate", "lo", "hi"):
            np.testing.assert_allclose(frame[col], w[col], equal_nan=True)
    assert np.isfinite(within["estimate"]).all() and np.isfinite(within["lo"]).all()
    # Runs: the same rows with each run's identity
    other, _ = _train(tmp_path, "acc2", probe_replicates=2, method="pcgrad")
    both = load_runs([run_dir, other]).expected_cosines(window=3, blocks="encoder")
    assert {"expected_cosines", "within_task_cosines", "noise_scale"} <= set(ACCESSORS)
    mine = both[both["run"] == "acc"].drop(columns=["run", "method", "seed", "schedule"])
    pd.testing.assert_frame_equal(mine.reset_index(drop=True),
                                  got.drop(columns=["run", "method", "seed", "schedule"]))
    # a raw accessor is unchanged by the replicates
    assert set(run.cosines()["source"]) == {"train", "probe"}


def test_one_replicate_gives_nan_with_a_reason(tmp_path):
    run_dir, _ = _train(tmp_path, "k1", probe_replicates=1)
    run = gradlab.load_run(run_dir)
    for frame in (run.expected_cosines(), run.within_task_cosines(), run.noise_scale()):
        assert len(frame) and frame[["estimate", "lo", "hi"]].isna().all().all()
        assert frame["reason"].str.contains("K=1").all()


def test_window_is_checked(tmp_path):
    run_dir, _ = _train(tmp_path, "w", probe_replicates=2, steps=1)
    run = gradlab.load_run(run_dir)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="window"):
            run.expected_cosines(window=bad)
