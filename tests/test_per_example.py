"""Per-example Gramians: equal to a loop of batch-1 backward passes into dense rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, TINY_ENCODER

from gradlab.data import collate, load_task, special_token_ids, tokenize_texts
from gradlab.model import MultitaskModel, block_name, load_encoder, load_tokenizer
from gradlab.per_example import (
    ExampleGradients,
    choose_strategy,
    example_gradients,
    example_gramians,
    example_task_cosines,
    sample_examples,
)
from gradlab.tasks import TASKS, task_loss

TASKS3 = ["sst", "para", "sts"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def examples():
    """A few real dev examples per task: lengths differ, so every batch is padded."""
    return {t: sample_examples(load_task(t, "dev", data_dir=DATA_DIR), n, seed=1)
            for t, n in zip(TASKS3, (5, 4, 4), strict=True)}


def _model(pair_heads: dict[str, str], pooling: str = "mean", seed: int = 0,
           **tiny) -> MultitaskModel:
    encoder = load_encoder("minilm", tiny={**TINY_ENCODER, **tiny}, seed=seed)
    torch.manual_seed(seed)
    model = MultitaskModel(encoder, TASKS3, pooling=pooling, pair_heads=pair_heads)
    return model.double()


def _reference(model, examples, tokenizer, max_length=64):
    """Block names and per-block Gramians [B, N, N] from dense per-example gradient rows:
    one batch-1 forward and backward per example."""
    named = model.shared_parameters()
    names = list(dict.fromkeys(block_name(n) for n, _ in named))
    special = special_token_ids(tokenizer)
    rows = []
    model.eval()
    for task, data in examples.items():
        tokenized = tokenize_texts(data, tokenizer)
        for i in range(len(data)):
            batch = collate(tokenized, [i], layout=model.layout(task), max_length=max_length,
                            **special)
            loss = task_loss(TASKS[task], model(task, batch), batch["labels"].double()
                             if batch["labels"].is_floating_point() else batch["labels"])
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g
                     for (_, p), g in zip(named, grads, strict=True)]
            rows.append({b: torch.cat([g.reshape(-1) for (n, _), g in zip(named, grads,
                                                                          strict=True)
                                       if block_name(n) == b]) for b in names})
    grams = torch.stack([torch.stack([r[b] for r in rows]) @ torch.stack([r[b] for r in rows]).T
                         for b in names])
    return tuple(names), grams, rows


def _assert_gramians_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9):
    # relative to the scale of the entries: |ΔG_ij| <= rtol sqrt(G_ii G_jj) (+ tiny)
    scale = torch.sqrt(torch.diagonal(expected, dim1=-2, dim2=-1).clamp_min(0))
    bound = rtol * scale.unsqueeze(-1) * scale.unsqueeze(-2) + 1e-300
    err = (actual - expected).abs()
    assert torch.all(err <= bound), f"max relative error {float((err / bound).max()) * rtol:.3g}"


@pytest.mark.parametrize("strategy", ["ghost", "dense", "auto"])
@pytest.mark.parametrize("pair_heads,pooling", [
    ({"para": "bi", "sts": "cross"}, "mean"),
    ({"para": "cross", "sts": "bi"}, "cls"),
])
def test_gramian_equals_batch_one_loop(examples, tokenizer, strategy, pair_heads, pooling):
    model = _model(pair_heads, pooling)
    grads = example_gradients(model, examples, tokenizer=tokenizer, strategy=strategy)
    names, expected, _ = _reference(model, examples, tokenizer)
    assert grads.block_names == names == ("embeddings", "layer.0", "layer.1")
    assert grads.block_gramians.shape == (3, 13, 13)
    assert grads.block_gramians.dtype == torch.float64
    for k in range(len(names)):
        _assert_gramians_close(grads.block_gramians[k], expected[k])
    _assert_gramians_close(grads.gramian, expected.sum(0))
    # an off-diagonal entry is not trivially zero: examples share [CLS], [SEP], positions
    assert (grads.gramian - torch.diag(torch.diagonal(grads.gramian))).abs().max() > 0


def test_truncation_and_token_types_and_cosine_head(examples, tokenizer):
    # max_length truncates the longer inputs; the cosine head has no parameters; the
    # token-type embeddings see type 1 in the cross-encoded STS pairs
    model = _model({"para": "cross", "sts": "cosine"}, "mean", seed=3)
    grads = example_gradients(model, examples, tokenizer=tokenizer, max_length=12)
    _, expected, _ = _reference(model, examples, tokenizer, max_length=12)
    for k in range(expected.shape[0]):
        _assert_gramians_close(grads.block_gramians[k], expected[k])


def test_pooler_and_a_frozen_parameter(examples, tokenizer):
    # a pooler that the model does not use has a zero Gramian; frozen parameters are skipped
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(**{**TINY_ENCODER, "vocab_size": 30522}),
                        add_pooling_layer=True)
    encoder.encoder.layer[0].attention.self.query.weight.requires_grad_(False)
    model = MultitaskModel(encoder, TASKS3).double()
    grads = example_gradients(model, examples, tokenizer=tokenizer)
    names, expected, _ = _reference(model, examples, tokenizer)
    assert names == grads.block_names == ("embeddings", "layer.0", "layer.1", "pooler")
    for k in range(len(names)):
        _assert_gramians_close(grads.block_gramians[k], expected[k])
    assert grads.block_gramians[3].abs().max() == 0


def test_blocks_subset_and_rows_follow_the_examples(examples, tokenizer):
    model = _model({"para": "bi", "sts": "bi"})
    full = example_gradients(model, examples, tokenizer=tokenizer)
    part = example_gradients(model, examples, tokenizer=tokenizer, blocks=["layer.1"])
    assert part.block_names == ("layer.1",)
    torch.testing.assert_close(part.gramian, full.block_gramians[2], rtol=1e-12, atol=0)
    assert full.tasks == ["sst"] * 5 + ["para"] * 4 + ["sts"] * 4
    assert full.ids == [i for d in examples.values() for i in d.ids]
    assert full.texts[5] == " ||| ".join(examples["para"].texts[0])
    assert "N=13 (sst=5, para=4, sts=4)" in repr(full)
    with pytest.raises(ValueError, match=r"blocks \['layer.7'\] are not blocks"):
        example_gradients(model, examples, tokenizer=tokenizer, blocks=["layer.7"])


def test_model_mode_is_restored_and_losses_are_per_example(examples, tokenizer):
    model = _model({"para": "bi", "sts": "bi"})
    model.train()
    grads = example_gradients(model, examples, tokenizer=tokenizer)
    assert model.training
    _, _, _ = _reference(model, {"sst": examples["sst"]}, tokenizer)
    special = special_token_ids(tokenizer)
    batch = collate(tokenize_texts(examples["sst"], tokenizer), [2], layout="single",
                    max_length=64, **special)
    model.eval()
    with torch.no_grad():
        loss = task_loss(TASKS["sst"], model("sst", batch), batch["labels"])
    assert float(grads.losses[2]) == pytest.approx(float(loss), rel=1e-10)


def test_bad_arguments(examples, tokenizer):
    model = _model({"para": "bi", "sts": "bi"})
    with pytest.raises(ValueError, match="strategy must be one of"):
        example_gradients(model, examples, tokenizer=tokenizer, strategy="fast")
    with pytest.raises(ValueError, match="sts_loss must be 'mse'"):
        example_gradients(model, examples, tokenizer=tokenizer, sts_loss="pearson")
    with pytest.raises(TypeError, match="non-empty mapping"):
        example_gradients(model, list(examples.values()), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="model has no head"):
        example_gradients(model, {"qqp": examples["para"]}, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"n must be in \[1, 5\]"):
        sample_examples(examples["sst"], 6)


def _as_tuples(examples):
    """The in-memory form `gradlab.gradients` takes: (sentences..., label as in the file)."""
    out = {}
    for task, data in examples.items():
        lo = data.spec.label_range[0]
        out[task] = [(*text, float(label) if data.spec.label_kind == "regression"
                      else int(label) + lo) for text, label in zip(data.texts, data.labels,
                                                                   strict=True)]
    return out


@pytest.fixture(scope="module")
def loaded():
    from gradlab.probing import load_model

    return load_model(None, tiny_encoder=TINY_ENCODER, data_dir=str(DATA_DIR))


def test_takes_what_gradients_takes(examples, loaded):
    """One parser (`gradlab.probing.parse_examples`): in-memory tuples, task files and
    TaskExamples give the same Gramian; the task means equal `gradlab.gradients`'."""
    from gradlab.probing import gradients

    tuples = _as_tuples(examples)
    from_objects = example_gradients(loaded, examples)
    from_tuples = example_gradients(loaded, tuples, blocks="layers")
    torch.testing.assert_close(from_tuples.block_gramians, from_objects.block_gramians,
                               rtol=1e-6, atol=1e-12)
    assert from_tuples.ids == ["0", "1", "2", "3", "4", "0", "1", "2", "3", "0", "1", "2", "3"]
    assert from_tuples.texts == from_objects.texts

    files = example_gradients(loaded, {"sst": DATA_DIR / "ids-sst-dev.csv",
                                       "sts": str(DATA_DIR / "sts-dev.csv")}, limit=3)
    first = {t: load_task(t, "dev", data_dir=DATA_DIR, limit=3) for t in ("sst", "sts")}
    assert files.ids == [i for d in first.values() for i in d.ids]
    torch.testing.assert_close(files.block_gramians,
                               example_gradients(loaded, first).block_gramians)
    assert example_gradients(loaded, examples, limit=2).tasks == \
        ["sst", "sst", "para", "para", "sts", "sts"]

    # a batch's mean-loss gradient is the mean of its examples' gradients
    task_level = gradients(loaded, examples)
    G, tasks = from_objects.gramian.numpy(), np.array(from_objects.tasks)
    means = np.array([[G[np.ix_(tasks == a, tasks == b)].mean() for b in task_level.tasks]
                      for a in task_level.tasks])
    np.testing.assert_allclose(task_level.gramian, means, rtol=1e-4,
                               atol=1e-6 * np.abs(means).max())
    np.testing.assert_allclose(gradients(loaded, tuples).gramian, task_level.gramian,
                               rtol=1e-6)

    with pytest.raises(ValueError, match="not a valid class label"):
        example_gradients(loaded, {"sst": [("fine", 7)]})
    with pytest.raises(TypeError, match="wrap it in a list"):
        example_gradients(loaded, {"sst": ("a film", 1)})
    with pytest.raises(TypeError, match="tokenizer is required"):
        example_gradients(loaded.model, examples)
    with pytest.raises(ValueError, match="holds examples of task 'sst'"):
        example_gradients(loaded, {"para": examples["sst"]})
    from gradlab.probing import load_model

    pearson = load_model(None, tiny_encoder=TINY_ENCODER, regression_loss="pearson")
    with pytest.raises(ValueError, match=r"tasks \['sts'\] are trained with 1 - Pearson r"):
        example_gradients(pearson, {"sts": examples["sts"]})
    example_gradients(pearson, {"sst": examples["sst"]})  # other tasks have per-example losses


def test_choose_strategy_counts_multiply_adds():
    # short inputs, wide layer: ghost; long inputs: the formed gradients
    assert choose_strategy(8, 32, 1024, 4096) == "ghost"
    assert choose_strategy(48, 48 * 30, 384, 384) == "dense"
    assert choose_strategy(48, 48 * 30, 384, 384, "ghost") == "ghost"


# --- the per-module kernels against formed gradients, over seeded random families ----------


def _random_factors(seed: int, n: int = 6, length: int = 7, d_in: int = 5, d_out: int = 4):
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(n, length, generator=g) < 0.7
    valid[:, 0] = True
    x = torch.randn(n, length, d_in, generator=g, dtype=torch.float64) * valid.unsqueeze(-1)
    d = torch.randn(n, length, d_out, generator=g, dtype=torch.float64) * valid.unsqueeze(-1)
    return x, d, valid


@pytest.mark.parametrize("seed", range(5))
def test_ghost_and_dense_kernels_equal_formed_gradients(seed):
    from gradlab.per_example import _dense_gramian, _ghost_gramian

    x, d, valid = _random_factors(seed)
    formed = torch.einsum("nle,nld->ned", d, x).reshape(len(x), -1)  # D_iᵀ X_i
    expected = formed @ formed.T
    torch.testing.assert_close(_ghost_gramian(x, d, valid), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_dense_gramian(x, d, valid, group=4), expected, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_embedding_kernel_counts_only_matching_ids(seed):
    from gradlab.per_example import _embedding_gramian

    g = torch.Generator().manual_seed(seed)
    n, length, hidden, vocab = 5, 6, 3, 7  # a small vocabulary: many shared ids
    ids = torch.randint(0, vocab, (n, length), generator=g)
    ids[torch.rand(n, length, generator=g) < 0.2] = -1  # padding: no gradient
    d = torch.randn(n, length, hidden, generator=g, dtype=torch.float64)
    formed = torch.zeros(n, vocab, hidden, dtype=torch.float64)
    for i in range(n):
        for s in range(length):
            if ids[i, s] >= 0:
                formed[i, ids[i, s]] += d[i, s]
    expected = formed.reshape(n, -1) @ formed.reshape(n, -1).T
    torch.testing.assert_close(_embedding_gramian(ids, d), expected, rtol=1e-12, atol=1e-12)


# --- statistics of the Gramian ----------------------------------------------------------------


def _brute_force_cosines(rows: np.ndarray, tasks: list[str], names: list[str]) -> np.ndarray:
    out = np.full((len(rows), len(names)), np.nan)
    for i in range(len(rows)):
        for k, t in enumerate(names):
            others = [j for j in range(len(rows)) if tasks[j] == t and j != i]
            if not others:
                continue
            mean = rows[others].mean(0)
            out[i, k] = rows[i] @ mean / (np.linalg.norm(rows[i]) * np.linalg.norm(mean))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_leave_one_out_cosines_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(9, 5)) + rng.normal(size=5)
    tasks = ["a", "a", "b", "c", "b", "a", "c", "c", "b"]
    if seed == 3:
        tasks = ["a", "a", "b", "c", "b", "a", "c", "c", "d"]  # d: no other example
    names = list(dict.fromkeys(tasks))
    got = example_task_cosines(rows @ rows.T, tasks, names)
    np.testing.assert_allclose(got, _brute_force_cosines(rows, tasks, names), rtol=1e-10,
                               atol=1e-12)


def test_zero_gradient_has_nan_cosines():
    rows = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])
    got = example_task_cosines(rows @ rows.T, ["a", "a", "b", "b"], ["a", "b"])
    assert np.isnan(got[1]).all()  # example 1's gradient is zero
    assert np.isnan(got[0, 0])  # its own task's other example is zero
    assert got[2, 0] == pytest.approx(1 / np.sqrt(2))


def _synthetic(rows: np.ndarray, tasks: list[str]) -> ExampleGradients:
    G = torch.from_numpy(rows @ rows.T)[None]
    n = len(tasks)
    return ExampleGradients(G, ("layer.0",), [f"e{i}" for i in range(n)], tasks,
                            [f"text {i}" for i in range(n)], np.zeros(n),
                            torch.arange(n, dtype=torch.float64))


def test_alignment_frame_and_extremes():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(10, 6))
    tasks = ["sst"] * 4 + ["para"] * 3 + ["sts"] * 3
    grads = _synthetic(rows, tasks)
    frame = grads.alignment()
    assert list(frame.columns) == ["example", "task", "target", "pair", "block", "cosine",
                                   "norm", "loss", "text"]
    assert len(frame) == 10 * 3
    cos = _brute_force_cosines(rows, tasks, ["sst", "para", "sts"])
    got = frame.pivot(index="example", columns="target", values="cosine")
    for i in range(10):
        for k, t in enumerate(["sst", "para", "sts"]):
            assert got.loc[f"e{i}", t] == pytest.approx(cos[i, k])
    assert frame.loc[frame.example == "e5", "norm"].iloc[0] == pytest.approx(
        np.linalg.norm(rows[5]))
    assert set(frame.pair) == {f"{a}→{b}" for a in ("sst", "para", "sts")
                               for b in ("sst", "para", "sts")}

    top = grads.extremes(k=2)
    assert list(top.columns) == ["pair", "task", "target", "kind", "rank", "example",
                                 "cosine", "norm", "loss", "text"]
    conflicting = top[(top.pair == "sst→para") & (top.kind == "conflicting")]
    expected = np.argsort(cos[:4, 1])[:2]
    assert list(conflicting.example) == [f"e{i}" for i in expected]
    assert list(conflicting["rank"]) == [1, 2]
    aligned = top[(top.pair == "para→sts") & (top.kind == "aligned")]
    assert list(aligned.example) == [f"e{4 + i}" for i in np.argsort(-cos[4:7, 2])[:2]]
    assert len(top) == 9 * 2 * 2
    assert len(grads.extremes(k=10)) == 2 * (4 * 3 + 3 * 3 + 3 * 3)
    with pytest.raises(ValueError, match="block must be 'encoder' or one of"):
        grads.alignment(block="layer.3")


def test_per_block_alignment(examples, tokenizer):
    model = _model({"para": "bi", "sts": "bi"})
    grads = example_gradients(model, examples, tokenizer=tokenizer)
    _, _, rows = _reference(model, examples, tokenizer)
    dense = torch.stack([r["layer.0"] for r in rows]).numpy()
    frame = grads.alignment(block="layer.0")
    expected = _brute_force_cosines(dense, grads.tasks, grads.task_names)
    got = frame.pivot(index="example", columns="target", values="cosine").loc[
        grads.ids, grads.task_names].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gramian_on_cuda_equals_cpu(examples, tokenizer):
    model = _model({"para": "bi", "sts": "cross"})
    cpu = example_gradients(model, examples, tokenizer=tokenizer)
    gpu = example_gradients(model.cuda(), examples, tokenizer=tokenizer)
    _assert_gramians_close(gpu.block_gramians, cpu.block_gramians, rtol=1e-9)


def test_low_level_gramians_take_collated_batches(examples, tokenizer):
    model = _model({"para": "bi", "sts": "bi"})
    special = special_token_ids(tokenizer)
    batches = {t: collate(tokenize_texts(d, tokenizer), np.arange(len(d)),
                          layout=model.layout(t), max_length=64, **special)
               for t, d in examples.items()}
    names, grams, losses = example_gramians(model, batches)
    grads = example_gradients(model, examples, tokenizer=tokenizer)
    assert names == grads.block_names
    torch.testing.assert_close(grams, grads.block_gramians, rtol=1e-12, atol=0)
    assert losses.shape == (13,)


@pytest.mark.slow
def test_gpu_check_script_dry_run(tmp_path):
    # the GPU script on the CPU: every part runs (or is skipped, saying why) and is summarised
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(root), "GRADLAB_DATA": str(DATA_DIR)}
    out = tmp_path / "gpu_check"
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), "--dry-run",
                           "--out", str(out)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert "per_example: ok" in summary and "gpu_tests: ok" in summary
    assert "step_ratio_minilm: ok" in summary
    assert "FAILED" not in summary and "TIMED OUT" not in summary
    assert "torch" in (out / "machine.txt").read_text()
    assert "batch-1 loop" in (out / "per_example.log").read_text()


# --- figures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["strip", "violin"])
def test_example_alignment_plot(kind):
    import matplotlib.pyplot as plt

    from gradlab.plot._examples import example_alignment

    rng = np.random.default_rng(1)
    grads = _synthetic(rng.normal(size=(12, 8)), ["sst"] * 4 + ["para"] * 4 + ["sts"] * 4)
    fig, ax = plt.subplots()
    assert example_alignment(grads, kind=kind, ax=ax) is ax
    assert [t.get_text() for t in ax.get_xticklabels()] == ["SST", "PARA", "STS"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["SST", "PARA", "STS"]
    assert "12 examples" in ax.get_title(loc="left")
    if kind == "strip":  # one dot per example and target task
        from matplotlib.collections import LineCollection, PathCollection

        dots = sum(len(c.get_offsets()) for c in ax.collections
                   if isinstance(c, PathCollection))
        assert dots == 12 * 3
        assert sum(isinstance(c, LineCollection) for c in ax.collections) == 9  # medians
    frame = grads.alignment()
    ax2 = example_alignment(frame, pair=["sst→para", "para→sst"], ax=plt.subplots()[1])
    assert [t.get_text() for t in ax2.get_xticklabels()] == ["SST", "PARA"]
    with pytest.raises(ValueError, match="kind must be"):
        example_alignment(grads, kind="bars")
    with pytest.raises(ValueError, match=r"pair \['sst→qqp'\] not in the data"):
        example_alignment(grads, pair="sst→qqp")
    with pytest.raises(ValueError, match="lacks the columns"):
        example_alignment(frame.drop(columns="cosine"))


def test_conflicting_examples_table():
    from gradlab.plot._examples import conflicting_examples

    rng = np.random.default_rng(2)
    tasks = ["sst"] * 4 + ["para"] * 4 + ["sts"] * 4
    grads = _synthetic(rng.normal(size=(12, 8)), tasks)
    grads.texts[0] = "word " * 200  # long: cut and wrapped
    fig = conflicting_examples(grads, k=2, width="icml-page")
    assert fig.get_size_inches()[0] == pytest.approx(6.75)
    texts = [t.get_text() for t in fig.axes[0].texts]
    top = grads.extremes(k=2)
    top = top[(top.kind == "conflicting") & (top.pair == "para→sst")]
    assert "PARA→SST" in texts
    for cosine in top.cosine:
        assert f"{cosine:+.3f}" in texts
    assert not any(t.startswith("word") and len(t) > 250 for t in texts)
    taller = conflicting_examples(grads, k=4, width="icml-page")
    assert taller.get_size_inches()[1] > fig.get_size_inches()[1]
    one = conflicting_examples(grads.extremes(k=1), k=1, pair="sst→sts", kind="aligned")
    assert "SST→STS" in [t.get_text() for t in one.axes[0].texts]
    with pytest.raises(ValueError, match="kind must be"):
        conflicting_examples(grads, kind="worst")
    with pytest.raises(ValueError, match="width must be"):
        conflicting_examples(grads, width="a4")
