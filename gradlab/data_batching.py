"""Collation (dynamic padding, truncation) and batching of tokenized tasks (re-exported by
:mod:`gradlab.data`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Self

import numpy as np
import torch

from gradlab.data_tokenize import Layout, TokenizedTask, _check_layout, _check_max_length
from gradlab.seeding import derive_seed

__all__ = [
    "TaskBatcher",
    "bucketed_batches",
    "collate",
]


# ---------------------------------------------------------------------------------------------
# Collation (dynamic padding, truncation)
# ---------------------------------------------------------------------------------------------


def collate(
    tokenized: TokenizedTask,
    indices: Sequence[int] | np.ndarray,
    *,
    layout: Layout,
    max_length: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """Model inputs for the examples ``indices`` (B of them), padded to the batch's longest.

    layout "single": [CLS] a [SEP] -> input_ids, attention_mask, token_type_ids [B, L].
    layout "bi": a and b encoded separately -> the same keys suffixed _a and _b ([B, L_a],
    [B, L_b]). layout "cross": [CLS] a [SEP] b [SEP] with token_type_ids 0 on the a part and 1
    on the b part, truncated longest-first. Each input holds at most ``max_length`` tokens.
    labels [B]: int64 for class tasks, float32 for binary and regression (BCE / MSE).
    """
    _check_layout(tokenized, layout)
    _check_max_length(max_length, layout)
    index = np.asarray(indices, dtype=np.int64)
    if index.ndim != 1 or len(index) == 0:
        raise ValueError(f"indices must be a non-empty 1-D sequence, found shape {index.shape}")
    if index.min() < 0 or index.max() >= len(tokenized):
        raise ValueError(f"indices must lie in [0, {len(tokenized)}), found {index.min()}.."
                         f"{index.max()}")
    seqs = tokenized.token_ids
    specials = (np.array([cls_id], np.int64), np.array([sep_id], np.int64))
    if layout == "cross":
        budget = max_length - 3
        inputs, types = [], []
        for i in index:
            a, b = seqs[0][i], seqs[1][i]
            keep_a, keep_b = _longest_first(len(a), len(b), budget)
            inputs.append(np.concatenate([specials[0], a[:keep_a], specials[1],
                                          b[:keep_b], specials[1]]))
            types.append(np.repeat([0, 1], [keep_a + 2, keep_b + 1]))
        batch = _pad(inputs, types, pad_id)
    else:
        batch = {}
        for column, suffix in ((0, "_a"), (1, "_b")) if layout == "bi" else ((0, ""),):
            inputs = [np.concatenate([specials[0], seqs[column][i][: max_length - 2],
                                      specials[1]]) for i in index]
            types = [np.zeros(len(x), np.int64) for x in inputs]
            batch |= {k + suffix: v for k, v in _pad(inputs, types, pad_id).items()}
    labels = torch.from_numpy(np.array(tokenized.labels[index]))
    batch["labels"] = labels.long() if tokenized.label_kind == "class" else labels.float()
    return batch


def _longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Tokens kept of a and b when trimming the longer one (b on ties) until both fit."""
    if len_a + len_b <= budget:
        return len_a, len_b
    if min(len_a, len_b) <= budget // 2:  # the shorter one fits whole
        return (len_a, budget - len_a) if len_a <= len_b else (budget - len_b, len_b)
    return budget - budget // 2, budget // 2


def _pad(inputs: list[np.ndarray], types: list[np.ndarray], pad_id: int
         ) -> dict[str, torch.Tensor]:
    """Right-pad B sequences to the longest: input_ids, attention_mask, token_type_ids [B, L]."""
    width = max(len(x) for x in inputs)
    input_ids = np.full((len(inputs), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(inputs), width), dtype=np.int64)
    token_type_ids = np.zeros((len(inputs), width), dtype=np.int64)
    for row, (ids, kinds) in enumerate(zip(inputs, types, strict=True)):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        token_type_ids[row, : len(ids)] = kinds
    return {"input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "token_type_ids": torch.from_numpy(token_type_ids)}


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


class TaskBatcher:
    """Endless index batches [batch_size] int64 over one task's N examples, reshuffled each epoch.

    Epoch e's order is ``torch.randperm(N)`` from a private torch.Generator seeded from
    (seed, task, e), so batches never depend on the global RNG and a state restored with
    ``load_state_dict`` continues with exactly the batches the original run would have drawn.
    With ``drop_last`` an epoch's final partial batch is skipped.
    """

    def __init__(self, num_examples: int, batch_size: int, *, seed: int, task: str,
                 drop_last: bool = False) -> None:
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, found {num_examples}")
        if batch_size < 1 or (drop_last and batch_size > num_examples):
            limit = f" and <= num_examples={num_examples} with drop_last" if drop_last else ""
            raise ValueError(f"batch_size must be >= 1{limit}, found {batch_size}")
        self.num_examples, self.batch_size = num_examples, batch_size
        self.seed, self.task, self.drop_last = seed, task, drop_last
        self.epoch, self.position = 0, 0  # position: examples of this epoch already served
        self._order: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (f"TaskBatcher(num_examples={self.num_examples}, batch_size={self.batch_size}, "
                f"seed={self.seed}, task={self.task!r}, drop_last={self.drop_last})")

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> np.ndarray:
        remaining = self.num_examples - self.position
        if remaining <= 0 or (self.drop_last and remaining < self.batch_size):
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        if self._order is None:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.task,
                                                                  self.epoch))
            self._order = torch.randperm(self.num_examples, generator=generator)
        batch = self._order[self.position : self.position + self.batch_size]
        self.position += len(batch)
        return batch.numpy().astype(np.int64)

    def state_dict(self) -> dict[str, int]:
        """Plain ints: seed, epoch, position (+ num_examples and batch_size, checked on load)."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "num_examples": self.num_examples, "batch_size": self.batch_size}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from ``state``; ValueError if it was saved for another seed, size or batch."""
        for name in ("seed", "num_examples", "batch_size"):
            if name in state and int(state[name]) != getattr(self, name):
                raise ValueError(f"state_dict {name}={state[name]} does not match this "
                                 f"batcher's {name}={getattr(self, name)} ({self!r})")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.num_examples:
            raise ValueError(f"state_dict needs epoch >= 0 and position in 0..{self.num_examples}"
                             f", found epoch={epoch}, position={position}")
        self.epoch, self.position, self._order = epoch, position, None


def bucketed_batches(
    tokenized: TokenizedTask, batch_size: int, *, layout: Layout | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """Evaluation batches of similar lengths (longest first), covering each example once.

    Returns (batches, restore): batches is a list of index arrays [<= batch_size]; if
    ``outputs`` [N, ...] stacks per-batch outputs in batch order, ``outputs[restore]`` is in the
    file's order. Lengths are those of ``layout`` (default: "single" or "cross").
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    layout = layout or ("single" if len(tokenized.ids) == 1 else "cross")
    order = np.argsort(-tokenized.lengths(layout), kind="stable")
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return batches, np.argsort(order, kind="stable")
