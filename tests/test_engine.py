"""The gradient engine: J equals per-task autograd gradients, Gramians, the written update."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_parts
from torch import nn

from gradlab.engine import GradientEngine
from gradlab.model import block_name, load_encoder


def _tiny_setup(num_tasks: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    encoder = load_encoder("minilm", tiny={"hidden_size": 16, "num_hidden_layers": 2,
                                           "num_attention_heads": 2, "intermediate_size": 32,
                                           "vocab_size": 100}, seed=seed)
    encoder.eval()  # no dropout: the same forward twice gives the same gradient
    named = list(encoder.named_parameters())
    engine = GradientEngine([p for _, p in named], [block_name(n) for n, _ in named], num_tasks)
    inputs = [torch.randint(0, 100, (3, 5 + t)) for t in range(num_tasks)]
    targets = [torch.randn(3, 16) for _ in range(num_tasks)]

    def loss(t: int) -> torch.Tensor:
        hidden = encoder(input_ids=inputs[t]).last_hidden_state.mean(1)
        return ((hidden - targets[t]) ** 2).mean() * (t + 1)

    return encoder, engine, loss


def _fill(engine, loss, rows):
    for row in range(rows):
        engine.bind_row(row)
        loss(row).backward()
        engine.check_bound(row)


def test_jacobian_rows_equal_per_task_autograd_grad():
    encoder, engine, loss = _tiny_setup()
    params = list(encoder.parameters())
    expected = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss(t), params)])
                for t in range(3)]
    _fill(engine, loss, 3)
    for t in range(3):
        torch.testing.assert_close(engine.jacobian[t], expected[t], rtol=1e-5, atol=1e-7)


def test_grad_views_survive_backward():
    # The speed of the engine rests on autograd accumulating into J in place.
    encoder, engine, loss = _tiny_setup()
    engine.bind_row(1)
    views = [p.grad for p in engine.params]
    loss(1).backward()
    assert all(p.grad is v for p, v in zip(engine.params, views, strict=True))
    assert engine.jacobian[1].abs().sum() > 0
    assert engine.jacobian[0].abs().sum() == 0


def test_block_gramians_sum_to_whole_and_match_brute_force():
    encoder, engine, loss = _tiny_setup()
    _fill(engine, loss, 3)
    blocks = engine.block_gramians(3)
    assert engine.block_names == ("embeddings", "layer.0", "layer.1")
    assert blocks.shape == (3, 3, 3) and blocks.dtype == torch.float64
    jac = engine.jacobian.double()
    torch.testing.assert_close(blocks.sum(0), jac @ jac.T, rtol=1e-5, atol=1e-9)
    for k, block in enumerate(engine.blocks):
        part = jac[:, block.start:block.stop]
        torch.testing.assert_close(blocks[k], part @ part.T, rtol=1e-5, atol=1e-9)


def test_write_update_is_weighted_sum_and_becomes_grad():
    encoder, engine, loss = _tiny_setup()
    _fill(engine, loss, 3)
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    engine.write_update(w, 3)
    expected = (w.float() @ engine.jacobian)
    torch.testing.assert_close(engine.update, expected)
    flat_grad = torch.cat([p.grad.reshape(-1) for p in engine.params])
    torch.testing.assert_close(flat_grad, expected)


def test_summed_loss_gradient_equals_sum_update():
    encoder, engine, loss = _tiny_setup()
    params = list(encoder.parameters())
    summed = torch.autograd.grad(loss(0) + loss(1) + loss(2), params)
    _fill(engine, loss, 3)
    engine.write_update(torch.ones(3), 3)
    torch.testing.assert_close(engine.update, torch.cat([g.reshape(-1) for g in summed]),
                               rtol=1e-5, atol=1e-7)


def test_blockwise_update():
    encoder, engine, loss = _tiny_setup()
    _fill(engine, loss, 3)
    w = torch.arange(9, dtype=torch.float64).reshape(3, 3) / 4
    engine.write_update(w, 3)
    for k, block in enumerate(engine.blocks):
        expected = w[k].float() @ engine.jacobian[:, block.start:block.stop]
        torch.testing.assert_close(engine.update[block.start:block.stop], expected)
    with pytest.raises(ValueError, match="blockwise weights have shape"):
        engine.write_update(torch.ones(2, 3), 3)


def test_subset_of_rows_and_single_task_update():
    encoder, engine, loss = _tiny_setup()
    _fill(engine, loss, 1)
    row0 = engine.jacobian[0].clone()
    assert engine.block_gramians(1).shape == (3, 1, 1)
    engine.use_row_as_update(0)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in engine.params]), row0)


def test_flat_params_round_trip_is_exact():
    encoder, engine, _ = _tiny_setup()
    saved = engine.flat_params()
    with torch.no_grad():
        for p in engine.params:
            p.add_(1.0)
    engine.load_flat_params(saved)
    assert torch.equal(engine.flat_params(), saved)


def test_noncontiguous_blocks_are_refused():
    params = [nn.Parameter(torch.zeros(2)) for _ in range(3)]
    with pytest.raises(ValueError, match="not contiguous"):
        GradientEngine(params, ["a", "b", "a"], 2)


def test_block_names_follow_encoder_modules():
    assert block_name("embeddings.word_embeddings.weight") == "embeddings"
    assert block_name("encoder.layer.11.output.dense.bias") == "layer.11"
    assert block_name("pooler.dense.weight") == "pooler"
    assert block_name("transformer.layer.3.ffn.lin1.weight") == "layer.3"


def test_large_block_gramian_is_accurate_to_float64():
    # Blocks longer than GRAMIAN_CHUNK go through the chunked path (float32 partial products
    # summed in float64); nearly orthogonal gradients must keep the sign of their tiny cosine.
    from gradlab.engine import GRAMIAN_CHUNK

    gen = torch.Generator().manual_seed(0)
    n = 3 * GRAMIAN_CHUNK + 123
    params = [nn.Parameter(torch.zeros(n)), nn.Parameter(torch.zeros(77))]
    engine = GradientEngine(params, ["big", "small"], 3)
    base = torch.randn(n + 77, generator=gen, dtype=torch.float64)
    rows = torch.stack([base + 0.01 * torch.randn(n + 77, generator=gen, dtype=torch.float64)
                        for _ in range(3)])
    engine.jacobian.copy_(rows.float())
    exact = engine.jacobian.double()
    blocks = engine.block_gramians(3)
    torch.testing.assert_close(blocks[0], exact[:, :n] @ exact[:, :n].T, rtol=5e-6, atol=0.0)
    torch.testing.assert_close(blocks[1], exact[:, n:] @ exact[:, n:].T, rtol=5e-6, atol=0.0)


# --- bfloat16 storage of J (gradient_dtype) -------------------------------------------------


def _tiny_pair(num_tasks: int = 3):
    """A float32 engine and a bfloat16 one on the same tiny BERT, both filled (same losses)."""
    encoder, wide, loss = _tiny_setup(num_tasks)
    named = list(encoder.named_parameters())
    narrow = GradientEngine([p for _, p in named], [block_name(n) for n, _ in named],
                            num_tasks, dtype=torch.bfloat16)
    _fill(wide, loss, num_tasks)
    _fill(narrow, loss, num_tasks)
    return wide, narrow, loss


def test_default_storage_is_the_parameters_dtype():
    encoder, engine, _ = _tiny_setup()
    assert engine.dtype == engine.jacobian.dtype == torch.float32
    assert engine.buffer_bytes == (3 + 1) * engine.num_params * 4
    with pytest.raises(TypeError, match="dtype must be a floating-point"):
        GradientEngine(engine.params, [block_name(n) for n, _ in encoder.named_parameters()], 3,
                       dtype=torch.int8)


def test_bfloat16_rows_are_the_float32_gradients_rounded_once():
    wide, narrow, _ = _tiny_pair()
    assert narrow.jacobian.dtype == torch.bfloat16 and narrow.update.dtype == torch.float32
    assert narrow.buffer_bytes == narrow.num_params * (3 * 2 + 4)
    # autograd accumulated the float32 gradient into the update buffer; one rounding into J
    assert torch.equal(narrow.jacobian, wide.jacobian.bfloat16())


def test_bfloat16_gramians_are_summed_in_float64_and_cosines_stay_close():
    wide, narrow, _ = _tiny_pair()
    blocks = narrow.block_gramians(3)
    assert blocks.dtype == torch.float64
    exact = narrow.jacobian.double()  # bfloat16 values are exact in float64
    for k, block in enumerate(narrow.blocks):
        part = exact[:, block.start:block.stop]
        torch.testing.assert_close(blocks[k], part @ part.T, rtol=1e-6, atol=1e-12)

    def cosines(g):
        d = torch.diagonal(g, dim1=-2, dim2=-1).sqrt()
        return g / (d[..., :, None] * d[..., None, :])

    reference = wide.block_gramians(3)
    # per-block cosines and norms against float32 storage: bfloat16 keeps 8 bits of mantissa
    # (relative rounding <= 2^-9 per value); over thousands of values the errors average out
    assert (cosines(blocks) - cosines(reference)).abs().max() < 2e-3
    norms = torch.diagonal(blocks, dim1=-2, dim2=-1).sqrt()
    ref_norms = torch.diagonal(reference, dim1=-2, dim2=-1).sqrt()
    assert ((norms / ref_norms) - 1).abs().max() < 2e-3


def test_bfloat16_large_block_gramian_uses_the_upcast_slabs():
    from gradlab.engine import UPCAST_SLAB

    gen = torch.Generator().manual_seed(0)
    n = UPCAST_SLAB + 5 * 65536 + 321  # two slabs, chunks and a remainder
    params = [nn.Parameter(torch.zeros(n))]
    engine = GradientEngine(params, ["big"], 2, dtype=torch.bfloat16)
    base = torch.randn(n, generator=gen)
    engine.jacobian.copy_(torch.stack([base + 0.01 * torch.randn(n, generator=gen),
                                       -base + 0.01 * torch.randn(n, generator=gen)]))
    exact = engine.jacobian.double()
    # float32 sums within a chunk of 65536 products (~1e-5 relative), float64 across chunks
    torch.testing.assert_close(engine.block_gramians(2)[0], exact @ exact.T, rtol=2e-5, atol=0.0)


def test_bfloat16_update_is_accumulated_in_float32_and_becomes_grad():
    wide, narrow, _ = _tiny_pair()
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    narrow.write_update(w, 3)
    expected = w @ narrow.jacobian.double()
    torch.testing.assert_close(narrow.update.double(), expected, rtol=1e-6, atol=1e-9)
    flat_grad = torch.cat([p.grad.reshape(-1) for p in narrow.params])
    assert flat_grad.dtype == torch.float32 and torch.equal(flat_grad, narrow.update)
    blockwise = torch.arange(9, dtype=torch.float64).reshape(3, 3) / 4
    narrow.write_update(blockwise, 3)
    for k, block in enumerate(narrow.blocks):
        part = narrow.jacobian[:, block.start:block.stop].double()
        torch.testing.assert_close(narrow.update[block.start:block.stop].double(),
                                   blockwise[k] @ part, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="weights have shape"):
        narrow.write_update(torch.ones(2), 3)


def test_bfloat16_storage_survives_a_clipped_update_and_a_single_task():
    # The update buffer is the scratch a backward fills: once it is the update, scaling it
    # (clipping) must not leak into J; a single task's update is its exact float32 gradient.
    wide, narrow, loss = _tiny_pair(num_tasks=2)
    narrow.write_update(torch.ones(2), 2)
    before = narrow.jacobian.clone()
    for p in narrow.params:
        p.grad.mul_(0.5)
    assert torch.equal(narrow.jacobian, before)
    narrow.bind_row(0)
    loss(0).backward()
    narrow.check_bound(0)
    narrow.use_row_as_update(0)
    assert torch.equal(torch.cat([p.grad.reshape(-1) for p in narrow.params]), wide.jacobian[0])
    narrow.use_row_as_update(1)  # not the last row filled: its stored (rounded) values
    assert torch.equal(narrow.update, narrow.jacobian[1].float())
    with pytest.raises(RuntimeError, match="not the bound row"):
        narrow.check_bound(1)


def test_gradient_dtype_config_reaches_training_and_probe_engines():
    from gradlab.config import ConfigError, TrainConfig, load_config
    from gradlab.probe import probe
    from gradlab.step import train_step

    assert TrainConfig().gradient_dtype == "float32"
    with pytest.raises(ConfigError, match="float16 is refused"):
        load_config(None, {"gradient_dtype": "float16"})
    results = {}
    for dtype in ("float32", "bfloat16"):
        parts = tiny_parts(gradient_dtype=dtype, method="pcgrad", probe_replicates=2)
        assert parts.engine.dtype == getattr(torch, dtype)
        batches = {t: parts.probe_batches[t] for t in parts.tasks}
        step = train_step(parts, parts.tasks, 0, batches=batches)
        assert step.fault is None
        assert all(p.grad.dtype == torch.float32 for p in parts.engine.params)
        found = probe(parts, 0, lr=1e-3)
        assert found.fault is None and found.replicate_gramians.shape[-1] == 2 * len(parts.tasks)
        results[dtype] = (step.block_gramians, parts.engine.update.clone())
    (g32, d32), (g16, d16) = results["float32"], results["bfloat16"]
    cos = torch.nn.functional.cosine_similarity
    assert cos(d32, d16, dim=0) > 0.999  # the PCGrad update barely moves
    torch.testing.assert_close(g16, g32, rtol=1e-2, atol=1e-9)


def test_doctests():
    import doctest

    from gradlab import engine

    assert doctest.testmod(engine).failed == 0
