"""Data-parallel gradients: 2 CPU ranks (gloo) give the same J as one process, whole batch."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gradlab.distributed import (
    DistInfo,
    average_gradients,
    average_scalar,
    choose_backend,
    init_from_env,
    reduction_device,
    shard,
)
from gradlab.engine import GradientEngine
from gradlab.model import block_name, load_encoder

TINY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 32, "vocab_size": 100, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0}


def _jacobian(rows: list[np.ndarray], inputs, info: DistInfo) -> torch.Tensor:
    encoder = load_encoder("minilm", tiny=TINY, seed=0)
    head = torch.nn.Linear(16, 1)
    torch.nn.init.constant_(head.weight, 0.1)
    torch.nn.init.constant_(head.bias, 0.2)
    named = list(encoder.named_parameters())
    engine = GradientEngine([p for _, p in named], [block_name(n) for n, _ in named], 2)
    for t, index in enumerate(rows):
        engine.bind_row(t)
        x = inputs[t][shard(index, info)]
        loss = head(encoder(input_ids=x).last_hidden_state.mean(1)).pow(2).mean()
        loss.backward()
    average_gradients(engine.jacobian, list(head.parameters()), info)
    return torch.cat([engine.jacobian.reshape(-1), head.weight.grad.reshape(-1)])


def _inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 100, (8, 6), generator=g) for _ in range(2)]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    info = DistInfo(rank, world)
    rows = [np.arange(8), np.arange(8)[::-1].copy()]
    flat = _jacobian(rows, _inputs(), info)
    assert average_scalar(float(rank), info) == pytest.approx((world - 1) / 2)
    if rank == 0:
        np.save(out, flat.numpy(), allow_pickle=False)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_with_the_combined_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank0.npy")
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    distributed = np.load(out, allow_pickle=False)
    single = _jacobian([np.arange(8), np.arange(8)[::-1].copy()], _inputs(), DistInfo()).numpy()
    np.testing.assert_allclose(distributed, single, rtol=1e-5, atol=1e-7)


def test_shard_splits_evenly_and_refuses_uneven():
    idx = np.arange(8)
    parts = [shard(idx, DistInfo(r, 2)) for r in range(2)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(8))
    with pytest.raises(ValueError, match="does not split evenly"):
        shard(np.arange(7), DistInfo(0, 2))
    assert shard(idx, DistInfo()) is idx


# --- which backend, and where reduced tensors live -----------------------------------------


@pytest.mark.parametrize(("device", "cuda", "nccl", "backend"), [
    ("cpu", True, True, "gloo"),  # before: nccl whenever CUDA was visible, even for device=cpu
    ("cpu", False, False, "gloo"),
    ("cuda", True, True, "nccl"),
    ("cuda:1", True, True, "nccl"),
    ("cuda", True, False, "gloo"),  # a torch built without nccl: gloo reduces CUDA tensors
])
def test_the_backend_follows_the_configured_device(device, cuda, nccl, backend):
    assert choose_backend(device, cuda_available=cuda, nccl_available=nccl) == backend


def test_the_backend_of_an_impossible_device_is_refused():
    with pytest.raises(ValueError, match="device='cuda' but no CUDA device is visible"):
        choose_backend("cuda", cuda_available=False, nccl_available=True)
    with pytest.raises(ValueError, match="device='tpu' must be 'cpu', 'cuda' or 'cuda:N'"):
        choose_backend("tpu", cuda_available=True, nccl_available=True)


def test_reduced_tensors_live_where_the_backend_needs_them():
    assert reduction_device("gloo") == "cpu"
    assert reduction_device("gloo", 1) == "cpu"  # a run on a GPU, reduced by gloo on the CPU
    assert reduction_device("nccl", 1) == "cuda:1"
    assert reduction_device("nccl") == "cuda:0"


def test_without_torchrun_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env("cpu") == DistInfo(0, 1, "cpu")
    assert average_scalar(2.5, DistInfo()) == 2.5


def _torchrun_worker(rank: int, world: int, port: int, out: str) -> None:
    # the variables torchrun sets; the backend comes from device="cpu"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    info = init_from_env("cpu")
    mean = average_scalar(float(rank + 1), info)
    if rank == 0:
        with open(out, "w") as f:
            f.write(f"{dist.get_backend()} {info.reduce_device} {info.world_size} {mean}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_init_from_env_joins_a_gloo_group_for_a_cpu_run(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.txt"
    mp.spawn(_torchrun_worker, args=(2, port, str(out)), nprocs=2, join=True)
    assert out.read_text() == "gloo cpu 2 1.5"
