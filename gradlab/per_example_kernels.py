"""Per-example Gramian kernels: forward/backward hook capture of every parameter module of the
encoder, per-example factors of one module, and the ghost / dense / embedding Gramians
(re-exported by :mod:`gradlab.per_example`, whose docstring gives the maths and its sources).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradlab.model import block_name
from gradlab.tasks import TaskSpec, task_loss

__all__ = ["choose_strategy"]

#: elements of the largest temporary one module's Gramian may build (chunks above it)
_CHUNK_ELEMENTS = 1 << 24


# --- capture: inputs and output gradients of every parameter module --------------------------


@dataclass
class _Call:
    """One forward call of a module: what its parameter gradient needs, and its output."""

    inputs: torch.Tensor  # Linear: X [B, L, d_in]; LayerNorm: x̂ [B, L, H]; Embedding: ids [B, L]
    output: torch.Tensor  # [B, L, d_out], still in the graph
    mask: torch.Tensor  # [B, L] 1 for tokens, 0 for padding


def _parameter_modules(encoder: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, block) of every encoder module that owns trainable parameters."""
    supported = (nn.Linear, nn.LayerNorm, nn.Embedding)
    found, unsupported = [], []
    for name, module in encoder.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not isinstance(module, supported):
            unsupported.append(f"{name} ({type(module).__name__})")
            continue
        blocks = {block_name(f"{name}.{n}") for n, _ in own}
        assert len(blocks) == 1, (name, blocks)
        found.append((name, module, blocks.pop()))
    if unsupported:
        raise NotImplementedError(
            "per-example Gramians support Linear, LayerNorm and Embedding parameters; the "
            f"encoder also trains {unsupported}")
    if not found:
        raise ValueError("the encoder has no trainable parameters")
    return found


@contextmanager
def _capture(encoder: nn.Module, modules: Sequence[tuple[str, nn.Module, str]]):
    """Record every call of ``modules`` during the forward passes run inside the block."""
    calls: dict[str, list[_Call]] = {name: [] for name, _, _ in modules}
    state: dict[str, torch.Tensor] = {}

    def on_encoder(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        shape = ids.shape if ids is not None else embeds.shape[:2]
        mask = kwargs.get("attention_mask")
        device = (ids if ids is not None else embeds).device
        state["mask"] = torch.ones(shape, device=device) if mask is None else mask.float()

    def hook(name):
        def on_module(module, args, output):
            mask = state["mask"]
            x = args[0]
            if isinstance(module, nn.Embedding) and output.shape[0] != mask.shape[0]:
                # position ids [1, L] broadcast over the batch: expand, so that the gradient
                # arriving here is per example rather than summed over the batch
                output = output.expand(mask.shape[0], *output.shape[1:])
                x = x.expand(mask.shape[0], *x.shape[1:])
                calls[name].append(_Call(x, output, mask))
                return output
            if isinstance(module, nn.LayerNorm):
                with torch.no_grad():
                    x = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
            if x.dim() == 2 and not isinstance(module, nn.Embedding):
                # one vector per example (e.g. a pooler on [CLS]): one position
                x, mask = x.unsqueeze(1), mask.new_ones(mask.shape[0], 1)
            calls[name].append(_Call(x.detach(), output, mask))
            return None
        return on_module

    handles = [encoder.register_forward_pre_hook(on_encoder, with_kwargs=True)]
    handles += [module.register_forward_hook(hook(name)) for name, module, _ in modules]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _per_example_losses(spec: TaskSpec, predictions: torch.Tensor, labels: torch.Tensor
                        ) -> torch.Tensor:
    """[B] each example's own loss: the task's loss of a batch of one."""
    if predictions.dtype in (torch.float16, torch.bfloat16):
        predictions = predictions.float()
    if labels.is_floating_point():
        labels = labels.to(predictions.dtype)
    return torch.stack([task_loss(spec, predictions[i:i + 1], labels[i:i + 1])
                        for i in range(len(labels))])


# --- per-example factors of one module --------------------------------------------------------


@dataclass
class _Factors:
    """What one module's per-example Gramian needs, for B examples.

    x: Linear X [B, L, d_in] or Embedding ids [B, L] (-1: no gradient); d: D [B, L, d_out];
    vectors: per-example gradients of the small parameters (biases, LayerNorm) [B, k];
    valid: Linear [B, L] bool, the positions that hold tokens.
    """

    x: torch.Tensor | None
    d: torch.Tensor | None
    vectors: torch.Tensor | None
    valid: torch.Tensor | None = None


def _factors(module: nn.Module, calls: list[_Call], grads: list[torch.Tensor | None]
             ) -> _Factors:
    """Per-example factors of a module over its calls (a bi-encoder calls it twice: the
    positions of both calls are concatenated, as both add to the example's gradient)."""
    if not calls:
        raise RuntimeError(f"{type(module).__name__} was not called in the forward pass")
    batch = calls[0].mask.shape[0]
    xs, ds, vectors, valid = [], [], [], []
    for call, grad in zip(calls, grads, strict=True):
        mask = call.mask.to(call.output.dtype)
        d = torch.zeros_like(call.output) if grad is None else grad.detach()
        d = d.reshape(*mask.shape, d.shape[-1])  # [B, d_out] -> [B, 1, d_out]
        d = d * mask.unsqueeze(-1)  # padded positions carry no gradient of the example
        if isinstance(module, nn.Embedding):
            ids = call.inputs.expand(batch, -1).long()
            drop = mask == 0
            if module.padding_idx is not None:
                drop = drop | (ids == module.padding_idx)
            xs.append(torch.where(drop, torch.full_like(ids, -1), ids))
            ds.append(d)
            continue
        if isinstance(module, nn.LayerNorm):
            parts = []
            if module.weight is not None and module.weight.requires_grad:
                parts.append((d * call.inputs).sum(1).flatten(1))
            if module.bias is not None and module.bias.requires_grad:
                parts.append(d.sum(1).flatten(1))
            vectors.append(torch.cat(parts, 1))
            continue
        # Linear
        if module.weight.requires_grad:
            xs.append(call.inputs * mask.unsqueeze(-1))
            ds.append(d)
            valid.append(mask > 0)
        if module.bias is not None and module.bias.requires_grad:
            vectors.append(d.sum(1))
    return _Factors(
        x=torch.cat(xs, 1) if xs else None,
        d=torch.cat(ds, 1) if ds else None,
        vectors=torch.stack(vectors).sum(0) if vectors else None,
        valid=torch.cat(valid, 1) if valid else None,
    )


def _joined(parts: list[_Factors]) -> _Factors:
    """The factors of all tasks' examples, padded to the longest sequence."""
    def cat(tensors: list[torch.Tensor | None], fill: Any = 0) -> torch.Tensor | None:
        if tensors[0] is None:
            return None
        if tensors[0].dim() == 2 and tensors[0].dtype in (torch.long, torch.bool):  # [B, L]
            width = max(t.shape[1] for t in tensors)
            return torch.cat([F.pad(t, (0, width - t.shape[1]), value=fill) for t in tensors])
        if tensors[0].dim() == 3:  # [B, L, d]
            width = max(t.shape[1] for t in tensors)
            return torch.cat([F.pad(t, (0, 0, 0, width - t.shape[1])) for t in tensors])
        return torch.cat(tensors)  # [B, k]
    return _Factors(cat([p.x for p in parts], -1), cat([p.d for p in parts]),
                    cat([p.vectors for p in parts]), cat([p.valid for p in parts], False))


# --- one module's Gramian ---------------------------------------------------------------------


def _module_gramian(module: nn.Module, parts: list[_Factors], strategy: str) -> torch.Tensor:
    """[N, N] Gramian of one module's per-example parameter gradients (parts: per task)."""
    f = _joined(parts)
    first = f.d if f.d is not None else f.vectors
    n = first.shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64, device=first.device)
    if f.vectors is not None:
        gram += (f.vectors @ f.vectors.T).double()
    if f.d is not None:
        if isinstance(module, nn.Embedding):
            gram += _embedding_gramian(f.x, f.d).double()
        elif choose_strategy(n, int(f.valid.sum()), f.x.shape[2], f.d.shape[2],
                             strategy) == "ghost":
            gram += _ghost_gramian(f.x, f.d, f.valid).double()
        else:
            gram += _dense_gramian(f.x, f.d, f.valid).double()
    return gram


def choose_strategy(n: int, tokens: int, d_in: int, d_out: int, strategy: str = "auto"
                    ) -> str:
    """"ghost" or "dense" for a Linear weight: the cheaper in multiply-adds unless forced.

    n examples holding ``tokens`` positions in all (S); ghost: S² (d_in + d_out + n);
    dense (per-example gradients formed): S d_in d_out + n² d_in d_out.
    """
    if strategy != "auto":
        return strategy
    ghost = tokens ** 2 * (d_in + d_out + n)
    dense = tokens * d_in * d_out + n * n * d_in * d_out
    return "ghost" if ghost < dense else "dense"


def _ghost_gramian(x: torch.Tensor, d: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Σ_{s,t} (X_i X_jᵀ)_st (D_i D_jᵀ)_st for all pairs; x [N, L, d_in], d [N, L, d_out],
    valid [N, L]: only the S positions that hold tokens take part (packed, no padding)."""
    n = x.shape[0]
    example = torch.arange(n, device=x.device).unsqueeze(1).expand_as(valid)[valid]  # [S]
    xp, dp = x[valid], d[valid]  # [S, d_in], [S, d_out]
    owner = F.one_hot(example, n).to(x.dtype)  # [S, N]
    tokens = len(example)
    rows = max(1, _CHUNK_ELEMENTS // max(tokens, 1))
    out = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    for a in range(0, tokens, rows):
        products = (xp[a:a + rows] @ xp.T) * (dp[a:a + rows] @ dp.T)  # [r, S]
        out.index_add_(0, example[a:a + rows], products @ owner)  # sum over t, then s
    return out


def _dense_gramian(x: torch.Tensor, d: torch.Tensor, valid: torch.Tensor,
                   group: int = 16) -> torch.Tensor:
    """Gramian of the formed per-example gradients D_iᵀ X_i, in chunks of output rows.

    x [N, L, d_in], d [N, L, d_out], valid [N, L]. Padding costs as much as tokens in the
    products D_iᵀ X_i (a bi-encoder pair is padded on both sentences), so each example's
    tokens are moved to the front and examples of similar length are formed together, in
    groups of ``group`` cut to their longest."""
    n, _, d_in = x.shape
    d_out = d.shape[2]
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # tokens first
    x = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, d_in))
    d = torch.gather(d, 1, order.unsqueeze(-1).expand(-1, -1, d_out))
    counts = valid.sum(1)
    by_length = torch.argsort(counts)
    groups = [(idx, max(1, int(counts[idx].max()))) for idx in by_length.split(group)]
    rows = max(1, _CHUNK_ELEMENTS // (n * d_in))
    out = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    for a in range(0, d_out, rows):
        r = min(rows, d_out - a)
        g = torch.empty(n, r * d_in, dtype=x.dtype, device=x.device)
        for idx, width in groups:
            g[idx] = torch.bmm(d[idx, :width, a:a + r].transpose(1, 2),
                               x[idx, :width]).reshape(len(idx), -1)
        out += g @ g.T
    return out


def _embedding_gramian(ids: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Σ_{s,t} [id_is = id_jt] D_is·D_jt; ids [N, L] (-1: none), d [N, L, H].

    Example i's gradient row for id u is r_iu = Σ_{s: id_is = u} D_is. Ids held by one
    example only contribute |r_iu|² to the diagonal; the shared ones go through one product.
    """
    n, length = ids.shape
    hidden = d.shape[2]
    valid = ids >= 0
    example = torch.arange(n, device=ids.device).unsqueeze(1).expand(n, length)[valid]
    token = ids[valid]
    vocab_ids, token_index = torch.unique(token, return_inverse=True)
    key = example * len(vocab_ids) + token_index
    pairs, pair_index = torch.unique(key, return_inverse=True)  # (example, id) pairs
    rows = torch.zeros(len(pairs), hidden, dtype=d.dtype, device=d.device)
    rows.index_add_(0, pair_index, d[valid])
    pair_example, pair_token = pairs // len(vocab_ids), pairs % len(vocab_ids)
    holders = torch.bincount(pair_token, minlength=len(vocab_ids))
    shared = holders[pair_token] > 1
    out = torch.zeros(n, n, dtype=d.dtype, device=d.device)
    alone = ~shared
    out.diagonal().index_add_(0, pair_example[alone], (rows[alone] ** 2).sum(1))
    if shared.any():
        columns, column_index = torch.unique(pair_token[shared], return_inverse=True)
        dense = torch.zeros(n, len(columns), hidden, dtype=d.dtype, device=d.device)
        dense[pair_example[shared], column_index] = rows[shared]
        flat = dense.reshape(n, -1)
        out += flat @ flat.T
    return out
