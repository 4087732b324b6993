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

Storage in a narrower dtype (``dtype=torch.bfloat16``: half of J's memory; large encoders):
autograd only writes a ``.grad`` of the parameter's dtype, so a task's backward accumulates
into the update buffer (parameter dtype, needed anyway) and the row is then rounded into J
once. J is brought up to date lazily, when it is next read (``jacobian``, the Gramians, the
update, the next ``bind_row``). Gramians are then computed from float32 copies of column
slabs (a product of two bfloat16 values is exact in float32), chunk partials summed in
float64 as in the default path; the update wᵀJ is accumulated in the parameters' dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

#: columns per float32 partial product in ``block_gramians`` (partials summed in float64)
GRAMIAN_CHUNK = 1 << 16
#: columns of J upcast to float32 at a time when J is stored in a narrower dtype
UPCAST_SLAB = 16 * GRAMIAN_CHUNK


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
    of each parameter (consecutive parameters of one block form one slice); dtype: J's
    storage (default: the parameters' dtype; ``torch.bfloat16`` halves J's memory, see the
    module's docstring). The update buffer always has the parameters' dtype.

    >>> engine = GradientEngine([nn.Parameter(torch.ones(3))], ["w"], 2, dtype=torch.bfloat16)
    >>> engine.jacobian.dtype, engine.update.dtype, engine.buffer_bytes
    (torch.bfloat16, torch.float32, 24)
    """

    def __init__(self, params: Sequence[nn.Parameter], block_names: Sequence[str],
                 num_tasks: int, *, dtype: torch.dtype | None = None) -> None:
        if len(params) != len(block_names):
            raise ValueError(f"{len(params)} params but {len(block_names)} block names")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.params = list(params)
        self.num_tasks = num_tasks
        # no parameters (a frozen encoder): J [T, 0], no blocks, Gramians [0, T, T]
        param_dtype, device = ((self.params[0].dtype, self.params[0].device) if self.params
                               else (torch.float32, torch.device("cpu")))
        dtype = param_dtype if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, found {dtype!r}")
        numels = [p.numel() for p in self.params]
        self.num_params = sum(numels)
        self._jacobian = torch.zeros(num_tasks, self.num_params, dtype=dtype, device=device)
        # narrower storage: which row the update buffer holds and its version when copied
        self._cast = dtype != param_dtype
        self._staged_row: int | None = None
        self._staged_version: int | None = None
        self.update = torch.zeros(self.num_params, dtype=param_dtype, device=device)
        offsets = [0]
        for n in numels:
            offsets.append(offsets[-1] + n)
        spans = list(zip(offsets[:-1], offsets[1:], strict=True))
        self._row_views = [
            [self._jacobian[t, a:b].view_as(p)
             for p, (a, b) in zip(self.params, spans, strict=True)]
            for t in range(num_tasks)
        ]
        self._update_views = [
            self.update[a:b].view_as(p) for p, (a, b) in zip(self.params, spans, strict=True)
        ]
        self.blocks = _blocks(block_names, offsets)

    @property
    def jacobian(self) -> torch.Tensor:
        """J [T, P] in the engine's ``dtype`` (up to date with the last backward)."""
        self._sync()
        return self._jacobian

    @property
    def dtype(self) -> torch.dtype:
        """J's storage dtype."""
        return self._jacobian.dtype

    @property
    def buffer_bytes(self) -> int:
        """Bytes of J [T, P] and the update [P] together."""
        return (self._jacobian.numel() * self._jacobian.element_size()
                + self.update.numel() * self.update.element_size())

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.blocks)

    def bind_row(self, row: int) -> None:
        """Zero row ``row`` of J and point every shared ``.grad`` at it (before a backward).

        With narrower storage the ``.grad`` tensors are the zeroed update buffer's views
        instead; the gradient is rounded into row ``row`` when J is next read."""
        if self._cast:
            self._sync()
            self.update.zero_()
            self._staged_row, self._staged_version = row, None  # None: copy on next read
            views = self._update_views
        else:
            self._jacobian[row].zero_()
            views = self._row_views[row]
        for p, view in zip(self.params, views, strict=True):
            p.grad = view

    def check_bound(self, row: int) -> None:
        """Assert the ``.grad`` tensors are still J's views (autograd accumulated in place)."""
        bound = self._row_views[row]
        if self._cast:
            if self._staged_row != row:
                raise RuntimeError(f"row {row} is not the bound row ({self._staged_row})")
            bound = self._update_views
        for p, view in zip(self.params, bound, strict=True):
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
        if jac.dtype not in (torch.float32, torch.float64):
            for k, block in enumerate(self.blocks):
                out[k] = _upcast_gramian(jac[:, block.start:block.stop]).cpu()
            return out
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
        jac = self.jacobian[:rows]
        if self._cast:
            self._staged_row = None  # the buffer becomes the update
            self._write_cast_update(weights, rows)
            return
        w = weights.to(device=jac.device, dtype=jac.dtype)
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
        """Point ``.grad`` at row ``row`` of J (a single task with weight 1: no copy).

        With narrower storage the update buffer becomes ``.grad``: it still holds the exact
        gradient when ``row`` was the last row filled, else row ``row`` is copied into it."""
        if not self._cast:
            for p, view in zip(self.params, self._row_views[row], strict=True):
                p.grad = view
            return
        self._sync()
        if self._staged_row != row:
            self.update.copy_(self._jacobian[row])
        self._staged_row = None  # the buffer becomes the update (clipping scales it)
        for p, view in zip(self.params, self._update_views, strict=True):
            p.grad = view

    def _write_cast_update(self, weights: torch.Tensor, rows: int) -> None:
        """``write_update`` for narrower storage: rows accumulated into the update buffer in
        its (the parameters') dtype, one ``add_`` per row (and block)."""
        w = weights.detach().to("cpu", torch.float64)
        blockwise = w.dim() == 2
        expected = (len(self.blocks), rows) if blockwise else (rows,)
        if tuple(w.shape) != expected:
            kind = "blockwise weights" if blockwise else "weights"
            raise ValueError(f"{kind} have shape {tuple(w.shape)}, expected "
                             f"[{', '.join(map(str, expected))}]")
        spans = [(k, b.start, b.stop) for k, b in enumerate(self.blocks)] if blockwise \
            else [(None, 0, self.num_params)]
        self.update.zero_()
        for k, a, b in spans:
            for t in range(rows):
                weight = float(w[k, t] if blockwise else w[t])
                if weight:
                    self.update[a:b].add_(self._jacobian[t, a:b], alpha=weight)
        for p, view in zip(self.params, self._update_views, strict=True):
            p.grad = view

    def _sync(self) -> None:
        """Narrower storage: round the bound row's gradient (the update buffer) into J if the
        buffer changed since the last copy (autograd's in-place accumulation bumps its
        version counter)."""
        if self._staged_row is not None and self.update._version != self._staged_version:
            self._jacobian[self._staged_row].copy_(self.update)
            self._staged_version = self.update._version

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


def _upcast_gramian(part: torch.Tensor) -> torch.Tensor:
    """part [n, m] (a narrower dtype) -> part partᵀ [n, n], float64: slabs of ``UPCAST_SLAB``
    columns upcast to float32, products of ``GRAMIAN_CHUNK`` columns in float32, summed in
    float64."""
    n, m = part.shape
    gram = torch.zeros(n, n, dtype=torch.float64, device=part.device)
    for a in range(0, m, UPCAST_SLAB):
        slab = part[:, a:a + UPCAST_SLAB].float()
        chunks = slab.shape[1] // GRAMIAN_CHUNK
        split = chunks * GRAMIAN_CHUNK
        if chunks:
            pieces = slab[:, :split].reshape(n, chunks, GRAMIAN_CHUNK).transpose(0, 1)
            gram += torch.bmm(pieces, pieces.transpose(1, 2)).double().sum(0)
        rest = slab[:, split:]
        if rest.shape[1]:
            gram += (rest @ rest.T).double()
    return gram


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
