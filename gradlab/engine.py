"""The gradient engine: per-task gradients into one [T, P] buffer, per-block Gramians, update.

Only this module points a shared parameter's ``.grad`` at a buffer (a row of J or the
update). Elsewhere ``.grad`` is only read (the probes' virtual step), scaled in place
(clipping in ``gradlab.step``), averaged in place across ranks (``gradlab.distributed``, the
heads') or cleared (``zero_grad``; the probes clear the heads').

The trick that makes per-task gradients cost what the summed loss costs: the tasks' batches
are different inputs, so their graphs are disjoint and one backward per task does the work
of one backward of the sum. Before task t's backward every shared parameter's ``.grad`` is
set to the view of its slice in row t of J; autograd then accumulates into J in place (no
copies, no retain_graph). The update wᵀJ is written into a second flat buffer whose views
become the ``.grad`` the optimizer reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

#: columns per float32 partial product in ``block_gramians`` (partials summed in float64)
GRAMIAN_CHUNK = 1 << 16


@dataclass(frozen=True)
class Block:
    """A contiguous slice [start, stop) of the flat shared-parameter vector."""

    name: str
    start: int
    stop: int

    @property
    def numel(self) -> int:
        return self.stop - self.start


class GradientEngine:
    """Owns J [T, P] (per-task shared gradients) and the update buffer [P].

    params: the shared parameters, in order (P = their total size); block_names: the block
    of each parameter (consecutive parameters of one block form one slice).
    """

    def __init__(self, params: Sequence[nn.Parameter], block_names: Sequence[str],
                 num_tasks: int) -> None:
        if len(params) != len(block_names):
            raise ValueError(f"{len(params)} params but {len(block_names)} block names")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.params = list(params)
        self.num_tasks = num_tasks
        # no parameters (a frozen encoder): J [T, 0], no blocks, Gramians [0, T, T]
        dtype, device = ((self.params[0].dtype, self.params[0].device) if self.params
                         else (torch.float32, torch.device("cpu")))
        numels = [p.numel() for p in self.params]
        self.num_params = sum(numels)
        self.jacobian = torch.zeros(num_tasks, self.num_params, dtype=dtype, device=device)
        self.update = torch.zeros(self.num_params, dtype=dtype, device=device)
        offsets = [0]
        for n in numels:
            offsets.append(offsets[-1] + n)
        spans = list(zip(offsets[:-1], offsets[1:], strict=True))
        self._row_views = [
            [self.jacobian[t, a:b].view_as(p) for p, (a, b) in zip(self.params, spans, strict=True)]
            for t in range(num_tasks)
        ]
        self._update_views = [
            self.update[a:b].view_as(p) for p, (a, b) in zip(self.params, spans, strict=True)
        ]
        self.blocks = _blocks(block_names, offsets)

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.blocks)

    def bind_row(self, row: int) -> None:
        """Zero row ``row`` of J and point every shared ``.grad`` at it (before a backward)."""
        self.jacobian[row].zero_()
        for p, view in zip(self.params, self._row_views[row], strict=True):
            p.grad = view

    def check_bound(self, row: int) -> None:
        """Assert the ``.grad`` tensors are still J's views (autograd accumulated in place)."""
        for p, view in zip(self.params, self._row_views[row], strict=True):
            if p.grad is None or p.grad.data_ptr() != view.data_ptr():
                raise RuntimeError(
                    "autograd replaced a .grad buffer instead of accumulating into J; "
                    "per-task gradients would be lost"
                )

    def block_gramians(self, rows: int) -> torch.Tensor:
        """Per-block Gramians of the first ``rows`` rows of J: [B, rows, rows], float64.

        Block b's Gramian is J_b J_bᵀ with J_b = J[:rows, block b]; they sum to J Jᵀ. Each
        block is split into chunks of ``GRAMIAN_CHUNK`` columns whose float32 products are
        summed in float64: one float32 product over a whole block (the embeddings hold 11.7 M
        values in MiniLM) loses enough precision to flip the sign of a cosine near 0.
        """
        out = torch.empty(len(self.blocks), rows, rows, dtype=torch.float64)
        jac = self.jacobian[:rows]
        for k, block in enumerate(self.blocks):
            n = block.numel // GRAMIAN_CHUNK
            split = block.start + n * GRAMIAN_CHUNK
            gram = torch.zeros(rows, rows, dtype=torch.float64, device=jac.device)
            if n:
                chunks = jac[:, block.start:split].reshape(rows, n, GRAMIAN_CHUNK).transpose(0, 1)
                gram += torch.bmm(chunks, chunks.transpose(1, 2)).double().sum(0)  # [n, T, T]
            rest = jac[:, split:block.stop]
            if rest.shape[1]:
                gram += (rest @ rest.T).double()
            out[k] = gram.cpu()
        return out

    def write_update(self, weights: torch.Tensor, rows: int) -> None:
        """Write d = wᵀJ[:rows] (weights [rows]) or per block w_bᵀ J_b (weights [B, rows])
        into the update buffer and point every shared ``.grad`` at it."""
        w = weights.to(device=self.jacobian.device, dtype=self.jacobian.dtype)
        jac = self.jacobian[:rows]
        if w.dim() == 1:
            if w.shape[0] != rows:
                raise ValueError(f"weights have shape {tuple(w.shape)}, expected [{rows}]")
            torch.mv(jac.t(), w, out=self.update)
        else:
            if tuple(w.shape) != (len(self.blocks), rows):
                raise ValueError(f"blockwise weights have shape {tuple(w.shape)}, expected "
                                 f"[{len(self.blocks)}, {rows}]")
            for k, block in enumerate(self.blocks):
                torch.mv(jac[:, block.start:block.stop].t(), w[k],
                         out=self.update[block.start:block.stop])
        for p, view in zip(self.params, self._update_views, strict=True):
            p.grad = view

    def use_row_as_update(self, row: int) -> None:
        """Point ``.grad`` at row ``row`` of J (a single task with weight 1: no copy)."""
        for p, view in zip(self.params, self._row_views[row], strict=True):
            p.grad = view

    def flat_params(self) -> torch.Tensor:
        """A copy of the shared parameters as one vector [P]."""
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def load_flat_params(self, flat: torch.Tensor) -> None:
        """Copy a [P] vector back into the shared parameters (exact restore)."""
        offset = 0
        with torch.no_grad():
            for p in self.params:
                n = p.numel()
                p.copy_(flat[offset:offset + n].view_as(p))
                offset += n


def _blocks(block_names: Sequence[str], offsets: list[int]) -> tuple[Block, ...]:
    blocks: list[Block] = []
    for name, a, b in zip(block_names, offsets[:-1], offsets[1:], strict=True):
        if blocks and blocks[-1].name == name:
            blocks[-1] = Block(name, blocks[-1].start, b)
        elif any(blk.name == name for blk in blocks):
            raise ValueError(f"parameters of block {name!r} are not contiguous")
        else:
            blocks.append(Block(name, a, b))
    return tuple(blocks)


__all__ = ["Block", "GradientEngine"]
