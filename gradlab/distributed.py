"""Data-parallel training with torch.distributed (launched with torchrun).

Every rank fills its own J [T, P] from its share of each task batch; J (and the head
gradients) are averaged across ranks before the Gramian, so every method sees the global
gradients and every rank computes the same weights and the same update. Only rank 0 writes
the run store and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Rank and world size of this process (rank 0 of 1 when not distributed), and the
    device the collectives reduce on: "cpu" for gloo, the rank's CUDA device for nccl."""

    rank: int = 0
    world_size: int = 1
    reduce_device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str = "cpu", backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR ...).

    Without those variables this is a single process: DistInfo(0, 1). device: the run's
    configured device; the backend follows it (``choose_backend``), not whether CUDA is
    visible. With device="cuda", each rank takes the GPU of its LOCAL_RANK.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo()
    index = None
    if device.startswith("cuda"):  # "cuda": the GPU of the rank's LOCAL_RANK; "cuda:N": N
        index = torch.device(device).index
        index = int(os.environ.get("LOCAL_RANK", "0")) if index is None else index
        torch.cuda.set_device(index)
    if not dist.is_initialized():
        backend = backend or choose_backend(device, cuda_available=torch.cuda.is_available(),
                                            nccl_available=dist.is_nccl_available())
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(),
                    reduction_device(dist.get_backend(), index))


def choose_backend(device: str, *, cuda_available: bool, nccl_available: bool) -> str:
    """The process-group backend for a run on ``device``: "gloo" for "cpu" (nccl cannot
    reduce CPU tensors, even where CUDA is visible), "nccl" for "cuda[:N]" where it is built
    in (else gloo, which also reduces CUDA tensors); ValueError for CUDA without a GPU.

    >>> choose_backend("cpu", cuda_available=True, nccl_available=True)
    'gloo'
    """
    if device == "cpu":
        return "gloo"
    if not device.startswith("cuda"):
        raise ValueError(f"device={device!r} must be 'cpu', 'cuda' or 'cuda:N'")
    if not cuda_available:
        raise ValueError(f"device={device!r} but no CUDA device is visible; use device=cpu")
    return "nccl" if nccl_available else "gloo"


def reduction_device(backend: str, cuda_index: int | None = None) -> str:
    """Where tensors all-reduced by ``backend`` must live: "cuda:<index>" for nccl (it
    reduces GPU tensors only), "cpu" for gloo."""
    if backend == "nccl":
        return f"cuda:{0 if cuda_index is None else cuda_index}"
    return "cpu"


def shard(indices: np.ndarray, info: DistInfo) -> np.ndarray:
    """This rank's share of a global batch of example indices [B] (rows rank, rank+W, ...).

    The global batch must divide evenly, so that the average of the ranks' mean losses is
    the mean loss of the whole batch.
    """
    if not info.enabled:
        return indices
    if len(indices) % info.world_size:
        raise ValueError(f"a batch of {len(indices)} examples does not split evenly over "
                         f"{info.world_size} ranks; choose batch_size divisible by the world size")
    return indices[info.rank::info.world_size]


def average_gradients(jacobian_rows: torch.Tensor, head_params: list[torch.nn.Parameter],
                      info: DistInfo) -> None:
    """All-reduce (mean) the filled rows of J [Ta, P] and the heads' gradients, in place."""
    if not info.enabled:
        return
    dist.all_reduce(jacobian_rows, op=dist.ReduceOp.SUM)
    jacobian_rows.div_(info.world_size)
    grads = [p.grad for p in head_params if p.grad is not None]
    if grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(info.world_size)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def average_scalar(value: float, info: DistInfo) -> float:
    """The mean of a float over the ranks (e.g. a task's loss), reduced on the device the
    backend needs (``info.reduce_device``)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.reduce_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item() / info.world_size)


class NullWriter:
    """The run writer of ranks other than 0: takes every call, writes nothing."""

    def __init__(self, method: str) -> None:
        self.method = method

    def __getattr__(self, name: str):
        if name.startswith("log_") or name in ("flush", "close", "truncate_after"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


__all__ = ["DistInfo", "NullWriter", "average_gradients", "average_scalar", "choose_backend",
           "init_from_env", "reduction_device", "shard"]
