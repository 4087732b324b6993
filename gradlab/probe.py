"""Probes: every task's gradient on K replicate probe batches, without an optimizer step.

Every N steps the loop measures all tasks' gradients on probe batches with dropout off and
the parameters unchanged. A probe at step s draws K independent batches ("replicates") of
every task, each named by (seed, s, task, replicate) (`probe_indices`): every run with the
same seed sees the same batches at the same step (runs of different methods and schedules
are compared on equal terms), while different probe steps see different data (so estimates
pool over steps). The K*T gradients form one Jacobian [K*T, P] through the public
`gradlab.step.task_gradients`, rows **replicate-major** (row a*T + i is replicate a of task
i, as `gradlab.calibration` expects), and one Gramian [K*T, K*T] per block. Replicate 0's
[T, T] block is the ordinary probe Gramian; each counterfactual method is asked what it would
have done with replicate 0's gradients: its weights w [T], the first-order predicted change
of each loss -lr G w [T] and, optionally, the change measured after a virtual SGD step.

With K > 1 the K*T rows do not fit the training engine (T rows): a probe engine with K*T
rows is allocated on the first probe and kept in ``parts.probe_engine`` (memory: K*T*P
float32 values besides the training engine's T*P; MiniLM-L6 with K = 2, T = 3: about 0.5 GB).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from gradlab.distributed import average_scalar
from gradlab.engine import GradientEngine
from gradlab.methods import MethodInput
from gradlab.seeding import derive_seed
from gradlab.step import task_gradients

if TYPE_CHECKING:
    from gradlab.build import Parts


def probe_indices(num_examples: int, batch_size: int, seed: int, *keys: int | str
                  ) -> np.ndarray:
    """Example indices [batch_size] of a probe batch, drawn without replacement from a
    generator seeded by ``derive_seed(seed, "probe", *keys)``: keys (probe step, task and
    replicate) name the batch, so it never depends on the method or schedule."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "probe", *keys))
    return torch.randperm(num_examples, generator=generator)[:batch_size].numpy()


def probe_batch(parts: Parts, step: int, task: str, replicate: int
                ) -> Mapping[str, torch.Tensor]:
    """The model inputs of replicate ``replicate`` of ``task``'s probe batch at ``step``:
    ``parts.probe_batch_size`` training examples drawn by ``probe_indices(N, b, parts.seed,
    step, task, replicate)``. Parts built by hand without a training set for ``task``
    (benchmarks) use the fixed ``parts.probe_batches[task]`` for every step and replicate."""
    data = parts.train_sets.get(task)
    if data is None:
        return parts.probe_batches[task]
    index = probe_indices(len(data.tokenized), parts.probe_batch_size, parts.seed, step, task,
                          replicate)
    return parts.batch(task, index)


def probe_inputs(parts: Parts, step: int) -> list[tuple[str, Mapping[str, torch.Tensor]]]:
    """The (task, batch) pairs of the probe at ``step``, replicate-major: K*T pairs, pair
    a*T + i is replicate a of task i (K = ``parts.probe_replicates``)."""
    return [(task, probe_batch(parts, step, task, a))
            for a in range(parts.probe_replicates) for task in parts.tasks]


def probe_engine(parts: Parts) -> GradientEngine:
    """The engine a probe fills: the training engine when its rows hold the K*T gradients
    (K = 1), else a K*T-row engine on the same parameters, allocated once and kept in
    ``parts.probe_engine``."""
    rows = parts.probe_replicates * len(parts.tasks)
    if rows <= parts.engine.num_tasks:
        return parts.engine
    engine = parts.probe_engine
    if engine is None or engine.num_tasks < rows or engine.params[0] is not parts.engine.params[0]:
        engine = GradientEngine(parts.engine.params, _param_block_names(parts.engine), rows,
                                dtype=parts.engine.dtype)
        parts.probe_engine = engine
    return engine


@dataclass
class ProbeResult:
    """What one probe found.

    losses [T] and block_gramians [B, T, T]: replicate 0 (the ordinary probe);
    replicate_losses [K*T] and replicate_gramians [B, K*T, K*T]: every replicate,
    replicate-major (row a*T + i: replicate a of task i); counterfactuals: method name ->
    (weights [T], predicted loss change [T], measured loss change [T] or None), on replicate
    0; fault: None, or the non-finite loss or gradient found (then no counterfactuals).
    """

    losses: torch.Tensor
    block_gramians: torch.Tensor | None = None
    counterfactuals: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = \
        field(default_factory=dict)
    fault: str | None = None
    replicate_losses: torch.Tensor | None = None
    replicate_gramians: torch.Tensor | None = None

    @property
    def replicates(self) -> int:
        """K, the number of probe batches per task."""
        n = len(self.losses) if self.replicate_losses is None else len(self.replicate_losses)
        return n // len(self.losses)


def probe(parts: Parts, step: int, lr: float, *, measure: bool = False) -> ProbeResult:
    """All K*T task gradients on the probe batches of ``step`` in eval mode, and the
    counterfactuals on replicate 0.

    lr: the learning rate of the predicted (and, with ``measure``, measured) changes. The
    parameters, the training mode and the heads' ``.grad`` (cleared) are left as found.
    """
    model, tasks = parts.model, parts.tasks
    T = len(tasks)
    was_training = model.training
    model.eval()
    try:
        batches = probe_inputs(parts, step)
        engine = probe_engine(parts)
        grads = task_gradients(model, batches, engine, loss=parts.loss, dist=parts.dist,
                               smart=False)
        for p in parts.head_params:
            p.grad = None
        full = grads.block_gramians
        result = ProbeResult(grads.losses[:T].clone(),
                             None if full is None else full[:, :T, :T].clone(),
                             fault=grads.fault, replicate_losses=grads.losses,
                             replicate_gramians=full)
        if result.fault is not None:
            return result
        block_gramians = result.block_gramians
        gramian = block_gramians.sum(0)
        for name, method in parts.counterfactuals.items():
            out = method(MethodInput(gramian=gramian, block_gramians=block_gramians,
                                     block_names=engine.block_names, losses=result.losses,
                                     step=step))
            w = out.weights.to(gramian.dtype)
            # first-order change of each loss: -lr G w (blockwise: -lr sum_b G_b w_b)
            predicted = -lr * (gramian @ w if w.dim() == 1 else
                               torch.einsum("bij,bj->i", block_gramians, w))
            if w.dim() == 2:  # log the block-averaged weights of a blockwise method
                w = w.mean(0)
            measured = virtual_step(parts, out.weights, lr, batches[:T], engine) \
                - result.losses if measure else None
            result.counterfactuals[name] = (w, predicted, measured)
        return result
    finally:
        model.train(was_training)


def example_probe_counts(sizes: Mapping[str, int], size: int) -> dict[str, int]:
    """Examples per task of an example probe of ``size``: about size/T each (the first
    size % T tasks one more), at most a task's training-set size."""
    T = len(sizes)
    return {t: min(n, size // T + (k < size % T)) for k, (t, n) in enumerate(sizes.items())}


def example_probe(parts: Parts, step: int, size: int):  # -> gradlab.per_example.ExampleGradients
    """Per-example gradient Gramians [B, N, N] of ``size`` training examples (about size/T
    per task, `example_probe_counts`) in eval mode, parameters unchanged.

    Task t's examples are ``probe_indices(N_t, n_t, parts.seed, "examples", step, t)`` in
    ascending order: named by (seed, step, task), never by the method or schedule, and drawn
    from their own generator, so a probe consumes none of the training RNG. Every example is
    whole on this process (not sharded); the returned ExampleGradients has ids and labels
    but empty texts (`gradlab.run.Run.example_gradients` re-reads them from the task files).
    """
    from gradlab.data import collate
    from gradlab.per_example import ExampleGradients, example_gramians

    counts = example_probe_counts({t: len(parts.train_sets[t].tokenized) for t in parts.tasks},
                                  size)
    index = {t: np.sort(probe_indices(len(parts.train_sets[t].tokenized), n, parts.seed,
                                      "examples", step, t))
             for t, n in counts.items() if n > 0}
    batches = {}
    for t, rows in index.items():
        batch = collate(parts.train_sets[t].tokenized, rows, layout=parts.model.layout(t),
                        max_length=parts.max_length, **parts.special)
        batches[t] = {k: v.to(parts.device) for k, v in batch.items()}
    # torch.autograd.grad inside: no parameter's .grad (the engine's views) is touched
    names, gramians, losses = example_gramians(parts.model, batches)
    return ExampleGradients(
        block_gramians=gramians, block_names=names, losses=losses,
        ids=[parts.train_sets[t].ids[i] for t, rows in index.items() for i in rows],
        tasks=[t for t, rows in index.items() for _ in rows],
        texts=["" for rows in index.values() for _ in rows],
        labels=np.concatenate([np.asarray(parts.train_sets[t].tokenized.labels[rows],
                                          dtype=np.float64) for t, rows in index.items()]))


@torch.no_grad()
def virtual_step(parts: Parts, weights: torch.Tensor, lr: float,
                 batches: list[tuple[str, Mapping[str, torch.Tensor]]] | None = None,
                 engine: GradientEngine | None = None) -> torch.Tensor:
    """Losses [T] on ``batches`` (replicate 0's (task, batch) pairs; default: those of probe
    step 0) after one SGD step of size lr along wᵀJ, J the first T rows of ``engine``
    (default: the probe engine, which holds the last probe's gradients); parameters
    restored exactly."""
    engine = engine or probe_engine(parts)
    batches = batches or probe_inputs(parts, 0)[:len(parts.tasks)]
    saved = engine.flat_params()
    engine.write_update(weights, len(parts.tasks))
    for p in engine.params:
        p.sub_(lr * p.grad)
    losses = torch.tensor([average_scalar(parts.loss(parts.model, task, batch, smart=False)[1],
                                          parts.dist)
                           for task, batch in batches], dtype=torch.float64)
    engine.load_flat_params(saved)
    return losses


def _param_block_names(engine: GradientEngine) -> list[str]:
    """The block name of each of ``engine``'s parameters, in order."""
    names = []
    for block in engine.blocks:
        size = 0
        for p in engine.params[len(names):]:
            if size == block.numel:
                break
            names.append(block.name)
            size += p.numel()
    return names


__all__ = ["ProbeResult", "example_probe", "example_probe_counts", "probe", "probe_batch",
           "probe_engine", "probe_indices", "probe_inputs", "virtual_step"]
