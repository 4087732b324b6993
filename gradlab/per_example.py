"""Exact per-example gradient Gramians over the shared encoder, without per-example gradients.

For N examples from several tasks, the Gramian G [N, N] holds every inner product of their
per-example gradients on the shared encoder (and per block [B, N, N]: embeddings, layer.0 ...
layer.N-1, as the gradient engine names them). It costs one forward and one backward per
task over all of that task's examples: forward hooks keep each parameter module's inputs,
and one ``torch.autograd.grad`` over the sum of the per-example losses (no reduction across
examples) returns the gradient D at each module's output, per example. The parameter
gradients themselves are never formed by autograd. Per module, with example i's inputs
X_i [L, d_in] and output gradients D_i [L, d_out] (positions of a bi-encoder's two
sentences concatenated; padding masked out):

- Linear weight (dW_i = D_iᵀ X_i): either the "ghost" product
  <dW_i, dW_j> = Σ_{s,t} (X_i X_jᵀ)_st (D_i D_jᵀ)_st (Goodfellow 2015, arXiv:1510.01799;
  Li et al. 2021, arXiv:2110.05679; Bu et al. 2022, arXiv:2210.00038) over the S token
  positions of all N examples (padding left out), costing S² (d_in + d_out), or the
  per-example gradients D_iᵀ X_i formed in chunks of output rows, costing
  S d_in d_out + N² d_in d_out; ``strategy="auto"`` takes the cheaper one per module (both
  exact, `choose_strategy`). For a Gramian (all pairs, not only the norms DP training needs)
  the ghost product pays for every pair of positions, so for MiniLM-sized layers and
  sentence-length inputs the formed gradients are cheaper; ghost wins for short inputs and
  wide layers.
- Linear bias (Σ_s D_is), LayerNorm weight (Σ_s D_is ⊙ x̂_is) and bias: per-example vectors.
- Embeddings (word, position, token type): example i's gradient has row u = Σ_{s: id_is = u}
  D_is, so <dE_i, dE_j> = Σ_{s,t} [id_is = id_jt] D_is·D_jt: only matching ids contribute.
  Ids held by one example only add to its diagonal entry; the word embeddings' padding_idx
  gets no gradient (as in ``nn.Embedding``).

Dropout is off (eval mode) while the Gramian is computed, so that an example's gradient is a
function of the example alone. The statistics are pure functions of G.

Where things live: this module holds the public API (`example_gradients`,
`example_gramians`, `sample_examples`, the `ExampleGradients` result and
`example_task_cosines`); the hook capture, the per-module factors and the ghost / dense /
embedding Gramian kernels (with `choose_strategy`) are in :mod:`gradlab.per_example_kernels`.

Example (the tests do the same on a tiny BERT)::

    examples = {t: sample_examples(load_task(t, "dev"), 16, seed=0) for t in tasks}
    grads = example_gradients(model, examples, tokenizer=tokenizer)
    grads.gramian.shape                        # [48, 48]
    grads.alignment()                          # cosine of each example with each task's mean
    grads.extremes(k=5)                        # most conflicting / aligned examples per pair
    # the inputs of gradlab.gradients work too: a LoadedModel / checkpoint, in-memory tuples
    example_gradients(gradlab.load_model(), {"sst": [("A film.", 4)], "sts": [("a", "b", 2.5)]})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from gradlab.data import TaskExamples, collate, special_token_ids, tokenize_texts
from gradlab.model import MultitaskModel
from gradlab.per_example_kernels import (
    _capture,
    _Factors,
    _factors,
    _module_gramian,
    _parameter_modules,
    _per_example_losses,
)
from gradlab.per_example_kernels import (  # the kernels, importable from here as before
    _dense_gramian as _dense_gramian,
)
from gradlab.per_example_kernels import _embedding_gramian as _embedding_gramian
from gradlab.per_example_kernels import _ghost_gramian as _ghost_gramian
from gradlab.per_example_kernels import choose_strategy as choose_strategy

__all__ = [
    "ExampleGradients",
    "example_gradients",
    "example_gramians",
    "sample_examples",
]

#: how a Linear weight's Gramian is computed: per module, the cheaper exact way, or one of them
STRATEGIES = ("auto", "ghost", "dense")
#: the pseudo-block whose Gramian is the sum of the block Gramians (as in the run store)
ENCODER = "encoder"


def example_gradients(model: Any, examples: Mapping[str, Any], *,
                      tokenizer: Any = None, blocks: str | Sequence[str] | None = None,
                      limit: int | None = None, max_length: int | None = None,
                      sts_loss: str = "mse", strategy: str = "auto") -> ExampleGradients:
    """Per-example gradient Gramian [N, N] and per-block Gramians [B, N, N] of ``examples``.

    model: a ``MultitaskModel`` (then ``tokenizer`` is required), or what
    ``gradlab.gradients`` takes (a `gradlab.probing.LoadedModel`, a checkpoint or run
    folder, a config file, a TrainConfig or None). examples: what ``gradlab.gradients``
    takes (`gradlab.probing.parse_examples`): task -> a list of ``(sentence, label)`` /
    ``(sentence1, sentence2, label)`` tuples, the path of a task file (its first ``limit``
    rows), or a ``TaskExamples`` (``gradlab.data.load_task``, `sample_examples`). N is the
    total count, ordered task by task as given.
    tokenizer: the encoder's tokenizer (default: the loaded model's). blocks: names of the
    encoder blocks to compute ("layers" or None: all; the training runs' blocks); the
    Gramian is the sum over them. max_length: truncation as in training (default: the loaded
    model's config, else 64). sts_loss: "mse" only, since 1 - Pearson r couples the examples
    of a batch and has no per-example term.
    An example's gradient is that of its own loss term (a batch's mean-loss gradient is the
    mean of its examples' gradients).
    """
    from gradlab.probing import load_model, parse_examples

    if isinstance(model, MultitaskModel):
        if tokenizer is None:
            raise TypeError("tokenizer is required with a MultitaskModel (or pass a "
                            "LoadedModel, checkpoint or config, which carry theirs)")
        max_length = 64 if max_length is None else max_length
    else:
        loaded = load_model(model)
        model, tokenizer = loaded.model, tokenizer or loaded.tokenizer
        max_length = loaded.config.max_length if max_length is None else max_length
    if isinstance(blocks, str) and blocks == "layers":
        blocks = None
    examples = parse_examples(examples, model.tasks, limit)
    special = special_token_ids(tokenizer)
    device = next(model.parameters()).device
    batches = {}
    for task, data in examples.items():
        # source_stat=None: never served from the file-keyed tokenization cache (a subset)
        tokenized = tokenize_texts(dataclasses.replace(data, source_stat=None), tokenizer)
        batch = collate(tokenized, np.arange(len(data)), layout=model.layout(task),
                        max_length=max_length, **special)
        batches[task] = {k: v.to(device) for k, v in batch.items()}
    names, gramians, losses = example_gramians(model, batches, blocks=blocks,
                                               sts_loss=sts_loss, strategy=strategy)
    return ExampleGradients(
        block_gramians=gramians, block_names=names, losses=losses,
        ids=[i for data in examples.values() for i in data.ids],
        tasks=[t for t, data in examples.items() for _ in range(len(data))],
        texts=[" ||| ".join(text) for data in examples.values() for text in data.texts],
        labels=np.concatenate([np.asarray(d.labels, dtype=np.float64)
                               for d in examples.values()]),
    )


def example_gramians(model: MultitaskModel, batches: Mapping[str, Mapping[str, torch.Tensor]],
                     *, blocks: Sequence[str] | None = None, sts_loss: str = "mse",
                     strategy: str = "auto"
                     ) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor]:
    """(block names, per-block Gramians [B, N, N] float64 on the CPU, losses [N] float64) of
    the examples of collated batches (task -> ``gradlab.data.collate`` output with labels).

    One forward and one backward per task; the model is in eval mode meanwhile (restored
    after). Rows follow the batches' order, task by task.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, found {strategy!r}")
    if sts_loss != "mse":
        raise ValueError(f"sts_loss must be 'mse' for per-example gradients, found {sts_loss!r}"
                         ": 1 - Pearson r is a loss of the whole batch, with no per-example "
                         "term")
    pearson = [t for t in batches if getattr(model.task_specs[t], "loss", None) == "pearson"]
    if pearson:
        raise ValueError(f"tasks {pearson} are trained with 1 - Pearson r, a loss of the whole "
                         "batch with no per-example term (regression_loss='mse' has one)")
    modules = _parameter_modules(model.encoder)
    all_blocks = list(dict.fromkeys(block for _, _, block in modules))
    if blocks is None:
        chosen = all_blocks
    else:
        if isinstance(blocks, str):
            blocks = [blocks]
        missing = [b for b in blocks if b not in all_blocks]
        if missing:
            raise ValueError(f"blocks {missing} are not blocks of the encoder; its blocks: "
                             f"{all_blocks}")
        chosen = [b for b in all_blocks if b in blocks]
    modules = [m for m in modules if m[2] in chosen]

    factors: dict[str, list[_Factors]] = {name: [] for name, _, _ in modules}
    losses = []
    was_training = model.training
    model.eval()
    try:
        for task, batch in batches.items():
            with _capture(model.encoder, modules) as calls:
                predictions = model(task, batch)
            per_example = _per_example_losses(model.task_specs[task], predictions,
                                              batch["labels"])
            outputs = [call.output for name in calls for call in calls[name]]
            grads = torch.autograd.grad(per_example.sum(), outputs, allow_unused=True)
            it = iter(grads)
            for name, module, _ in modules:
                factors[name].append(_factors(module, calls[name], [next(it) for _ in
                                                                    calls[name]]))
            losses.append(per_example.detach().double().cpu())
    finally:
        model.train(was_training)

    n = sum(len(x) for x in losses)
    out = torch.zeros(len(chosen), n, n, dtype=torch.float64)
    for name, module, block in modules:
        gram = _module_gramian(module, factors.pop(name), strategy)
        out[chosen.index(block)] += gram.double().cpu()
    return tuple(chosen), out, torch.cat(losses)


def sample_examples(examples: TaskExamples, n: int, *, seed: int = 0) -> TaskExamples:
    """``n`` examples of ``examples`` drawn without replacement (seeded), in file order."""
    if not 0 < n <= len(examples):
        raise ValueError(f"n must be in [1, {len(examples)}], found {n}")
    rows = np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False))
    return dataclasses.replace(
        examples, ids=[examples.ids[i] for i in rows], texts=[examples.texts[i] for i in rows],
        labels=np.asarray(examples.labels)[rows],
        line_numbers=[examples.line_numbers[i] for i in rows], source_stat=None)


# --- the result -----------------------------------------------------------------------------


@dataclass
class ExampleGradients:
    """Per-example gradient Gramians of N examples, with who the examples are.

    block_gramians: [B, N, N] float64, one per encoder block (block_names); gramian: their
    sum [N, N]. ids, tasks, texts (a pair's two sentences joined by " ||| "), labels [N],
    losses [N]: each example's own loss.
    """

    block_gramians: torch.Tensor
    block_names: tuple[str, ...]
    ids: list[str]
    tasks: list[str]
    texts: list[str]
    labels: np.ndarray
    losses: torch.Tensor
    task_names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.task_names = list(dict.fromkeys(self.tasks))

    def __repr__(self) -> str:
        counts = ", ".join(f"{t}={self.tasks.count(t)}" for t in self.task_names)
        return (f"ExampleGradients(N={len(self.ids)} ({counts}), "
                f"blocks={list(self.block_names)})")

    @property
    def gramian(self) -> torch.Tensor:
        """[N, N] float64: the Gramian over all computed blocks."""
        return self.block_gramians.sum(0)

    def block_gramian(self, block: str = ENCODER) -> np.ndarray:
        """[N, N] Gramian of one block ("encoder": the sum of all)."""
        if block == ENCODER:
            return self.gramian.numpy()
        if block not in self.block_names:
            raise ValueError(f"block must be 'encoder' or one of {list(self.block_names)}, "
                             f"found {block!r}")
        return self.block_gramians[self.block_names.index(block)].numpy()

    def alignment(self, block: str = ENCODER) -> pd.DataFrame:
        """One row per example x task: the cosine of the example's gradient with the task's
        mean gradient over the task's other examples (leave-one-out), and the example's norm.

        Columns: example, task, target, pair ("sst→para": example's task → target task),
        block, cosine, norm, loss, text. The diagonal pairs (target = own task) are the
        reference: how much an example agrees with the rest of its own task.
        """
        G = self.block_gramian(block)
        cos = example_task_cosines(G, self.tasks, self.task_names)
        norms = np.sqrt(np.clip(np.diag(G), 0.0, None))
        rows = []
        for k, target in enumerate(self.task_names):
            for i in range(len(self.ids)):
                rows.append((self.ids[i], self.tasks[i], target, f"{self.tasks[i]}→{target}",
                             block, cos[i, k], norms[i], float(self.losses[i]), self.texts[i]))
        return pd.DataFrame(rows, columns=["example", "task", "target", "pair", "block",
                                           "cosine", "norm", "loss", "text"])

    def extremes(self, k: int = 5, block: str = ENCODER) -> pd.DataFrame:
        """The k most conflicting (lowest cosine) and k most aligned examples of each
        (task → target) pair, from `alignment`. Columns: pair, task, target, kind
        ("conflicting" | "aligned"), rank (1 = most), example, cosine, norm, loss, text."""
        if k < 1:
            raise ValueError(f"k must be >= 1, found {k}")
        frame = self.alignment(block).dropna(subset=["cosine"])
        parts = []
        for _, group in frame.groupby(["task", "target"], sort=False):
            for kind, ascending in (("conflicting", True), ("aligned", False)):
                top = group.sort_values("cosine", ascending=ascending, kind="stable").head(k)
                parts.append(top.assign(kind=kind, rank=np.arange(1, len(top) + 1)))
        out = pd.concat(parts, ignore_index=True) if parts else frame.head(0).assign(
            kind=pd.Series(dtype=str), rank=pd.Series(dtype="int64"))
        return out[["pair", "task", "target", "kind", "rank", "example", "cosine", "norm",
                    "loss", "text"]]


def example_task_cosines(gramian: np.ndarray, tasks: Sequence[str],
                         task_names: Sequence[str]) -> np.ndarray:
    """[N, K]: cosine of example i's gradient with the mean gradient of task k's examples,
    leaving example i out of its own task's mean. NaN where the example's gradient or the
    mean is zero, or where the task has no other example.

    With m = Σ_{j in k, j != i} g_j: g_i·m = Σ_j G_ij and |m|² = Σ_{j,l} G_jl (the count
    cancels in the cosine).
    """
    G = np.asarray(gramian, dtype=np.float64)
    labels = np.asarray(tasks)
    out = np.full((len(labels), len(task_names)), np.nan)
    diag = np.clip(np.diag(G), 0.0, None)
    for k, task in enumerate(task_names):
        member = labels == task
        row_sums = G[:, member].sum(1)  # g_i · Σ_{j in k} g_j
        total = G[np.ix_(member, member)].sum()  # |Σ_{j in k} g_j|²
        dot = row_sums - np.where(member, diag, 0.0)
        # |Σ_{j != i} g_j|² = total - 2 g_i·Σ_j g_j + |g_i|² for members of k
        mean_sq = np.where(member, total - 2.0 * row_sums + diag, total)
        others = member.sum() - member.astype(int)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = dot / np.sqrt(diag * np.clip(mean_sq, 0.0, None))
        eps = 1e-12 * max(float(diag.max(initial=0.0)), 1e-300)
        bad = (others == 0) | (diag <= eps) | (mean_sq <= eps)
        out[:, k] = np.where(bad, np.nan, np.clip(cos, -1.0, 1.0))
    return out
