"""gradlab.probing: task gradients on chosen examples equal brute-force autograd; blocks,
replicates, file input, checkpoints, errors, and the arrow diagram on the result."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, TINY_ENCODER

import gradlab
from gradlab import calibration, probing, stats
from gradlab.data import collate, special_token_ids, tokenize_texts
from gradlab.tasks import TASKS, task_loss

EXAMPLES = {  # the papers' three examples, and one more per task
    "sst": [("As an actress, Madonna is one helluva singer.", 4),
            ("A dull, lifeless film.", 0)],
    "para": [("Who is the most famous contemporary singer/band in German-speaking world?",
              "Who is your favorite singer/band from your country?", 0),
             ("How do I learn Python?", "What is the best way to learn Python?", 1)],
    "sts": [("Red-shirt leader calls not to oppose army.", "Beijing not to send army.", 0.6),
            ("A man is playing a guitar.", "A man plays the guitar.", 4.8)],
}


@pytest.fixture(scope="module")
def loaded():
    return probing.load_model(None, tiny_encoder=dict(TINY_ENCODER), max_length=32)


def _brute_force(loaded, examples, split):
    """Per (replicate, task) flattened autograd gradients of the shared parameters [K*T, P]."""
    model = loaded.model
    params = [p for _, p in model.shared_parameters()]
    rows = []
    for a in range(split):
        for t in model.tasks:
            tok = tokenize_texts(probing._task_examples(t, examples[t], None), loaded.tokenizer)
            index = np.array_split(np.arange(len(tok)), split)[a]
            batch = collate(tok, index, layout=model.layout(t), max_length=32,
                            **special_token_ids(loaded.tokenizer))
            loss = task_loss(TASKS[t], model(t, batch), batch["labels"])
            grads = torch.autograd.grad(loss, params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]).double())
    return torch.stack(rows).numpy()


def test_gramian_equals_brute_force_autograd(loaded):
    g = gradlab_gradients(loaded, EXAMPLES)
    J = _brute_force(loaded, EXAMPLES, 1)
    np.testing.assert_allclose(g.gramian, J @ J.T, rtol=1e-5, atol=1e-9)
    assert g.replicate_gramians.shape == (len(g.block_names), 3, 3)
    np.testing.assert_allclose(g.block_gramians.sum(0), g.gramian)
    cos = g.cosines(blocks="encoder")
    assert list(cos.columns) == ["block", "pair", "task_a", "task_b", "value"]
    assert cos.pair.tolist() == ["sst-para", "sst-sts", "para-sts"]
    np.testing.assert_allclose(cos.value, stats.cosines(J @ J.T)[[0, 0, 1], [1, 2, 2]],
                               rtol=1e-5)
    norms = g.norms()
    assert list(norms.columns) == ["block", "task", "value", "share"]
    enc = norms[norms.block == "encoder"]
    np.testing.assert_allclose(enc.value, np.linalg.norm(J, axis=1), rtol=1e-5)
    np.testing.assert_allclose(norms[norms.block != "encoder"].groupby("task").share.sum()
                               [["sst", "para", "sts"]], 1.0, rtol=1e-9)
    assert g.losses.shape == (1, 3) and np.all(g.losses > 0)


def gradlab_gradients(loaded, examples, **kwargs):
    return probing.gradients(loaded, examples, **kwargs)


def test_replicates_are_one_gradient_per_batch_and_feed_calibration(loaded):
    g = probing.gradients(loaded, EXAMPLES, replicates=2)
    J = _brute_force(loaded, EXAMPLES, 2)  # rows a*T + i: replicate-major
    np.testing.assert_allclose(g.replicate_gramians.sum(0), J @ J.T, rtol=1e-5, atol=1e-9)
    mean = J.reshape(2, 3, -1).mean(0)  # each task's mean gradient over its 2 batches
    np.testing.assert_allclose(g.gramian, mean @ mean.T, rtol=1e-5, atol=1e-9)
    assert g.replicates == 2 and g.batch_sizes.tolist() == [[1, 1, 1], [1, 1, 1]]
    frame = g.calibrated()
    rho = frame[(frame.kind == "pair") & (frame.quantity == "expected_cos")]
    expected = calibration.expected_cosines(J @ J.T, 3)
    # K=2 and one probe: no interval, so the estimates are reported with NaN intervals
    np.testing.assert_allclose(rho.estimate, expected[[0, 0, 1], [1, 2, 2]], rtol=1e-5)
    assert rho.lo.isna().all() and (rho.reason != "").all()


def test_blocks_fine_and_patterns_partition_the_same_gradients(loaded):
    by_layer = probing.gradients(loaded, EXAMPLES, blocks="layers")
    fine = probing.gradients(loaded, EXAMPLES, blocks="fine")
    assert by_layer.block_names == ["embeddings", "layer.0", "layer.1"]
    assert fine.block_names == ["word_embeddings", "other_embeddings", "layer.0.attention",
                                "layer.0.ffn", "layer.1.attention", "layer.1.ffn"]
    np.testing.assert_allclose(fine.gramian, by_layer.gramian, rtol=1e-4)
    # fine blocks refine the layer blocks: word + other embeddings = embeddings
    np.testing.assert_allclose(fine.block_gramians[:2].sum(0), by_layer.block_gramians[0],
                               rtol=1e-4)
    np.testing.assert_allclose(fine.block_gramians[2:4].sum(0), by_layer.block_gramians[1],
                               rtol=1e-4)
    pat = probing.gradients(loaded, EXAMPLES, blocks=["*attention*", "*word_embeddings*"])
    assert pat.block_names == ["*attention*", "*word_embeddings*", "other"]
    attention = fine.block_gramians[[2, 4]].sum(0)
    np.testing.assert_allclose(pat.block_gramians[0], attention, rtol=1e-4)
    np.testing.assert_allclose(pat.gramian, by_layer.gramian, rtol=1e-4)
    names = [n for _, n, _ in probing.parameter_blocks(loaded.model, ["*attention*"])]
    assert sorted(names) == sorted(n for n, _ in loaded.model.shared_parameters())


def test_dropout_is_off_and_the_training_mode_restored(loaded):
    loaded.model.train()
    try:
        a = probing.gradients(loaded, EXAMPLES)
        b = probing.gradients(loaded, EXAMPLES)
        assert loaded.model.training
    finally:
        loaded.model.eval()
    np.testing.assert_array_equal(a.gramian, b.gramian)
    assert all(p.grad is None for p in loaded.model.parameters())


def test_task_files_with_a_limit(loaded):
    files = {"sst": DATA_DIR / "ids-sst-train.csv", "sts": str(DATA_DIR / "sts-train.csv")}
    g = probing.gradients(loaded, files, limit=6, replicates=3)
    assert g.tasks == ["sst", "sts"]
    assert g.batch_sizes.tolist() == [[2, 2]] * 3
    assert g.replicate_gramians.shape[-1] == 6
    assert np.isfinite(g.gramian).all()


def test_load_model_from_a_run_folder_and_a_config_file(tmp_path, tiny_overrides):
    handle = gradlab.train(None, **{**tiny_overrides, "name": "r", "steps": 2})
    from_run = probing.load_model(handle.path)
    assert not from_run.model.training and from_run.source == str(handle.path)
    trained = from_run.model.state_dict()
    fresh = probing.load_model(None, **{k: tiny_overrides[k] for k in ("tiny_encoder",)})
    assert any(not torch.equal(trained[k], v) for k, v in fresh.model.state_dict().items())
    config = tmp_path / "c.yaml"
    config.write_text("tiny_encoder: {hidden_size: 32, num_hidden_layers: 2, "
                      "num_attention_heads: 2, intermediate_size: 64}\nseed: 3\n")
    from_file = probing.load_model(config)
    assert from_file.config.seed == 3
    with pytest.raises(ValueError, match="would change the model"):
        probing.load_model(handle.path, tiny_encoder={"hidden_size": 64})


def test_gradient_arrows_draws_the_result(loaded):
    import matplotlib.pyplot as plt

    g = probing.gradients(loaded, EXAMPLES)
    tasks, G = g.as_gramian()
    assert tasks == ["sst", "para", "sts"] and G.shape == (3, 3)
    ax = gradlab.plot.gradient_arrows(g.as_gramian(), methods=("sum", "pcgrad"))
    gids = {a.get_gid() for a in ax.texts if a.get_gid()}
    assert {"gradlab-arrow:task:sst", "gradlab-arrow:update:pcgrad"} <= gids
    plt.close(ax.figure)
    _, G_layer = g.as_gramian("layer.1")
    np.testing.assert_allclose(G_layer, g.block_gramians[2])


@pytest.mark.parametrize("examples, match", [
    ({"sst": [("fine", 7)]}, "not a valid class label"),
    ({"para": [("a", "b", 0.5)]}, "not a valid binary label"),
    ({"sts": [("a", 1.0)]}, "2 sentence"),
    ({"sst": [("", 1)]}, "non-empty strings"),
    ({"sst": []}, "empty"),
    ({"cola": [("a", 1)]}, "not the model's tasks"),
])
def test_bad_examples_name_the_problem(loaded, examples, match):
    with pytest.raises(ValueError, match=match):
        probing.gradients(loaded, examples)


def test_bad_arguments(loaded):
    with pytest.raises(TypeError, match="wrap it in a list"):
        probing.gradients(loaded, {"sst": ("a film", 1)})
    with pytest.raises(ValueError, match="fewer than replicates=3"):
        probing.gradients(loaded, EXAMPLES, replicates=3)
    with pytest.raises(ValueError, match="blocks must be one of"):
        probing.gradients(loaded, EXAMPLES, blocks="heads")
    with pytest.raises(ValueError, match="match no shared parameter"):
        probing.gradients(loaded, EXAMPLES, blocks=["*nothing*"])
    with pytest.raises(ValueError, match="block must be one of"):
        probing.gradients(loaded, EXAMPLES).as_gramian("pooler")
    with pytest.raises(FileNotFoundError, match="neither"):
        probing.load_model("no/such/config.yaml")


def test_doctests():
    assert doctest.testmod(probing, raise_on_error=False).failed == 0
