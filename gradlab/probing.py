"""Task gradients on chosen examples, from a notebook in a few lines.

``load_model`` gives the model a checkpoint, run folder or config describes (eval mode:
dropout off); ``gradients`` computes one gradient of the shared encoder per task (or K
"replicate" gradients per task, one per batch) on in-memory examples or task files, and
returns their Gramians per parameter block with tidy frames of cosines and norms:

    >>> import gradlab
    >>> loaded = gradlab.load_model()  # packaged MiniLM, heads at seed 0  # doctest: +SKIP
    >>> g = gradlab.gradients(loaded, {         # doctest: +SKIP
    ...     "sst": [("As an actress, Madonna is one helluva singer.", 4)],
    ...     "para": [("Who is the most famous contemporary singer/band in German-speaking "
    ...               "world?", "Who is your favorite singer/band from your country?", 0)],
    ...     "sts": [("Red-shirt leader calls not to oppose army.", "Beijing not to send army.",
    ...              0.6)]}, blocks="fine")
    >>> g.cosines(blocks="encoder")                                       # doctest: +SKIP
    >>> gradlab.plot.gradient_arrows(g.as_gramian())                      # doctest: +SKIP

Parameter blocks: "layers" (the training runs' blocks: embeddings, layer.0 .. layer.N-1),
"fine" (word_embeddings apart from other_embeddings; layer.k.attention apart from
layer.k.ffn) or a list of parameter-name patterns (fnmatch globs on the encoder's own
parameter names, e.g. ``["*word_embeddings*", "*attention*"]``; each pattern is a block,
a parameter belongs to the first pattern it matches, the rest form block "other").
Block "encoder" in the frames is the sum of all blocks, as in a run's store.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gradlab.config import TrainConfig, load_config, to_dict
from gradlab.data import (
    DEFAULT_READERS,
    TaskExamples,
    TokenizedTask,
    collate,
    read_task_file,
    special_token_ids,
    tokenize_texts,
)
from gradlab.engine import GradientEngine
from gradlab.model import MultitaskModel, block_name
from gradlab.step import TaskLoss, task_gradients
from gradlab.tasks import TASKS

__all__ = ["BLOCK_CHOICES", "Gradients", "LoadedModel", "gradients", "load_model",
           "parameter_blocks", "parse_examples"]

BLOCK_CHOICES = ("layers", "fine")
ENCODER = "encoder"  # the pseudo-block whose Gramian is the sum of all blocks (as in the store)


@dataclass
class LoadedModel:
    """A model ready for gradients: the multitask model (eval mode), its tokenizer and the
    config it was built from; ``source`` says where it came from."""

    model: MultitaskModel
    tokenizer: Any
    config: TrainConfig
    source: str

    @property
    def tasks(self) -> list[str]:
        return list(self.model.tasks)

    def __repr__(self) -> str:
        return (f"LoadedModel(source={self.source!r}, encoder={self.config.encoder!r}, "
                f"tasks={self.tasks})")


def load_model(source: LoadedModel | TrainConfig | str | Path | None = None,
               **overrides: Any) -> LoadedModel:
    """The model a checkpoint, run folder or config describes, in eval mode (dropout off).

    source: a checkpoint folder or a run folder (its best checkpoint, else last); a YAML
    config file; a TrainConfig; or None (the default config: the packaged MiniLM-L6 with
    freshly initialised heads from ``seed``). overrides: config keys; for a checkpoint only
    keys that leave the model unchanged (data_dir, max_length, ...).

    >>> loaded = load_model(None, tiny_encoder={"hidden_size": 32, "num_hidden_layers": 2})
    >>> loaded.tasks, loaded.model.training
    (['sst', 'para', 'sts'], False)
    """
    from gradlab.build import model_from_config as build_model

    if isinstance(source, LoadedModel):
        if overrides:
            raise ValueError(f"overrides {sorted(overrides)} cannot change an already loaded "
                             "model; pass its source instead")
        return source
    if source is None or isinstance(source, TrainConfig):
        values = {} if source is None else to_dict(source)
        cfg = load_config(None, {**values, **overrides})
        label = "default config" if source is None else "TrainConfig"
    elif isinstance(source, str | Path):
        path = Path(source)
        if path.is_dir():
            from gradlab.inference import load_model as load_checkpoint_model

            model, tokenizer, cfg = load_checkpoint_model(
                path, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
            return LoadedModel(model.eval(), tokenizer, cfg, str(path))
        if not path.is_file():
            raise FileNotFoundError(f"source {str(path)!r} is neither a checkpoint or run folder "
                                    "nor a config file")
        cfg = load_config(path, overrides)
        label = str(path)
    else:
        raise TypeError(f"source must be a checkpoint or run folder, a config file, a "
                        f"TrainConfig or None, found {type(source).__name__}")
    model, tokenizer = build_model(cfg)
    return LoadedModel(model.eval(), tokenizer, cfg, label)


@dataclass
class Gradients:
    """Task gradients of the shared encoder on chosen examples, as Gramians.

    replicate_gramians [B, K*T, K*T] (float64): per parameter block, the Gramian of the K*T
    batch gradients in replicate-major order (row a*T + i: batch a of task i; the layout
    `gradlab.calibration` takes). losses [K, T]: the batches' losses; batch_sizes [K, T]:
    their examples. ``gramian`` [T, T] and ``block_gramians`` [B, T, T] are those of each
    task's mean gradient over its K batches (its gradient on all its examples when the batches
    have equal sizes).
    """

    tasks: list[str]
    block_names: list[str]
    replicate_gramians: np.ndarray
    losses: np.ndarray
    batch_sizes: np.ndarray
    blocks: str | list[str] = "layers"
    block_numel: list[int] = field(default_factory=list)

    @property
    def replicates(self) -> int:
        return self.replicate_gramians.shape[-1] // len(self.tasks)

    @property
    def block_gramians(self) -> np.ndarray:
        """[B, T, T]: Gramians of the tasks' mean gradients, per block."""
        K, T = self.replicates, len(self.tasks)
        X = self.replicate_gramians.reshape(-1, K, T, K, T)
        return X.sum(axis=(1, 3)) / K**2

    @property
    def gramian(self) -> np.ndarray:
        """[T, T]: the Gramian of the tasks' mean gradients over the whole encoder."""
        return self.block_gramians.sum(0)

    def as_gramian(self, block: str = ENCODER) -> tuple[list[str], np.ndarray]:
        """(tasks, G [T, T]) of one block ("encoder": all): what `plot.gradient_arrows` takes.

        >>> gradlab.plot.gradient_arrows(g.as_gramian(), methods=("sum", "mgda"))  # doctest: +SKIP
        """
        return list(self.tasks), self._gramians()[self._block_index(block)]

    def cosines(self, blocks: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Pairwise cosines of the tasks' mean gradients per block: columns block, pair,
        task_a, task_b, value (as `Run.cosines`, without run and step); NaN for a zero norm."""
        from gradlab import stats

        names, G = self._select(blocks)
        C = stats.cosines(G)
        ia, ib = np.triu_indices(len(self.tasks), 1)
        tasks = np.array(self.tasks, dtype=object)
        return pd.DataFrame({
            "block": np.repeat(names, len(ia)),
            "pair": np.tile(tasks[ia] + "-" + tasks[ib], len(names)),
            "task_a": np.tile(tasks[ia], len(names)), "task_b": np.tile(tasks[ib], len(names)),
            "value": C[:, ia, ib].reshape(-1).astype(float)})

    def norms(self, blocks: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Norms of the tasks' mean gradients per block: columns block, task, value (as
        `Run.norms`, without run and step); ``share`` adds the block's share of the task's
        squared norm."""
        from gradlab import stats

        names, G = self._select(blocks)
        total = np.diagonal(self.gramian).clip(0.0, None)
        sq = np.diagonal(G, axis1=-2, axis2=-1).clip(0.0, None)
        T = len(self.tasks)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(total > 0, sq / total, np.nan)
        return pd.DataFrame({"block": np.repeat(names, T),
                             "task": np.tile(np.array(self.tasks, dtype=object), len(names)),
                             "value": stats.task_norms(G).reshape(-1).astype(float),
                             "share": share.reshape(-1).astype(float)})

    def calibrated(self, level: float = 0.95) -> pd.DataFrame:
        """Noise-calibrated statistics of the replicate gradients over the whole encoder
        (`gradlab.calibration`): per-pair rows (expected_cos, raw_cos, ...) then per-task rows
        (within_cos, signal_share, b_noise, ...), each with estimate, lo, hi, reason. Needs
        K >= 2 replicates (else every value is NaN with a reason); batches of unequal sizes
        are refused, since B_noise is in examples of one batch."""
        from gradlab import calibration

        sizes = np.unique(self.batch_sizes)
        if len(sizes) != 1:
            raise ValueError(f"calibrated() needs batches of one size, found sizes "
                             f"{sizes.tolist()}")
        G = self.replicate_gramians.sum(0)
        pairs = calibration.pair_frame(G, self.tasks, level=level)
        per_task = calibration.task_frame(G, self.tasks, batch_size=int(sizes[0]), level=level)
        return pd.concat([pairs.assign(kind="pair"), per_task.assign(kind="task")],
                         ignore_index=True)

    def __repr__(self) -> str:
        return (f"Gradients(tasks={self.tasks}, replicates={self.replicates}, "
                f"blocks={len(self.block_names)} ({self.blocks!r}), examples per batch "
                f"{self.batch_sizes.tolist()})")

    # -- private ------------------------------------------------------------------------------

    def _gramians(self) -> np.ndarray:
        """[1 + B, T, T]: "encoder" then every block."""
        blocks = self.block_gramians
        return np.concatenate([blocks.sum(0, keepdims=True), blocks])

    def _block_index(self, block: str) -> int:
        names = [ENCODER, *self.block_names]
        if block not in names:
            raise ValueError(f"block must be one of {names}, found {block!r}")
        return names.index(block)

    def _select(self, blocks) -> tuple[list[str], np.ndarray]:
        names = [ENCODER, *self.block_names]
        if blocks is None:
            chosen = names
        else:
            chosen = [blocks] if isinstance(blocks, str) else list(blocks)
        idx = [self._block_index(b) for b in chosen]
        return chosen, self._gramians()[idx]


def gradients(model: LoadedModel | TrainConfig | str | Path | None,
              examples: Mapping[str, Any], *, blocks: str | Sequence[str] = "layers",
              replicates: int = 1, limit: int | None = None) -> Gradients:
    """Per-task gradients of the shared encoder on chosen examples (dropout off).

    model: a `LoadedModel` or anything `load_model` takes. examples: task -> a list of
    examples, each ``(sentence, label)`` for a single-sentence task or ``(sentence1,
    sentence2, label)`` for a pair task, labels as in the task files (SST 0-4, PARA 0/1, STS
    0-5); or task -> the path of a task file (its first ``limit`` rows). replicates: K; each
    task's examples are split into K consecutive batches, one gradient each (K >= 2 gives
    `Gradients.calibrated`). blocks: "layers", "fine" or a list of parameter-name patterns
    (see the module docstring). Each batch's loss is the task's training loss (its mean over
    the batch); the gradient is the engine's row of J.
    """
    loaded = load_model(model)
    net = loaded.model
    parsed = parse_examples(examples, net.tasks, limit)
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ValueError(f"replicates must be a positive int, found {replicates!r}")
    tasks = [t for t in net.tasks if t in parsed]  # model order
    tokenized = {t: tokenize_texts(parsed[t], loaded.tokenizer) for t in tasks}
    for t in tasks:
        if len(tokenized[t]) < replicates:
            raise ValueError(f"examples[{t!r}] has {len(tokenized[t])} examples, fewer than "
                             f"replicates={replicates}")
    parts = {t: np.array_split(np.arange(len(tokenized[t])), replicates) for t in tasks}
    engine, names = gradient_engine(net, blocks, rows=replicates * len(tasks))
    batches = [(t, _batch(loaded, tokenized[t], parts[t][a])) for a in range(replicates)
               for t in tasks]
    losses, G = _task_gradients(net, batches, engine)
    T = len(tasks)
    return Gradients(tasks=tasks, block_names=list(engine.block_names), replicate_gramians=G,
                     losses=losses.reshape(replicates, T),
                     batch_sizes=np.array([[len(parts[t][a]) for t in tasks]
                                           for a in range(replicates)]),
                     blocks=names, block_numel=[b.numel for b in engine.blocks])


def parse_examples(examples: Mapping[str, Any], tasks: Sequence[str],
                   limit: int | None = None) -> dict[str, TaskExamples]:
    """task -> TaskExamples of what `gradients` and `gradlab.example_gradients` take, in the
    order given: per task a list of ``(sentence, label)`` / ``(sentence1, sentence2, label)``
    tuples (ids "0", "1", ...), the path of a task file (its first ``limit`` rows, ids from
    the file) or a ``TaskExamples`` (``gradlab.data.load_task``; its first ``limit`` rows).
    tasks: the model's tasks; any other task is refused."""
    if not isinstance(examples, Mapping) or not examples:
        raise TypeError(f"examples must be a non-empty mapping task -> examples or file, "
                        f"found {type(examples).__name__}")
    unknown = [t for t in examples if t not in tasks]
    if unknown:
        raise ValueError(f"examples: tasks {unknown} are not the model's tasks {list(tasks)} "
                         "(the model has no head for them)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise ValueError(f"limit must be a positive int or None, found {limit!r}")
    return {t: _task_examples(t, value, limit) for t, value in examples.items()}


def parameter_blocks(model: MultitaskModel, blocks: str | Sequence[str] = "layers"
                     ) -> list[tuple[str, str, torch.nn.Parameter]]:
    """(block, parameter name, parameter) of every shared parameter, grouped by block.

    blocks: "layers" (`gradlab.model.block_name`), "fine" (word_embeddings, other_embeddings,
    layer.k.attention, layer.k.ffn) or parameter-name patterns (fnmatch globs; first match
    wins; unmatched parameters form block "other"). Order: blocks in order of first
    appearance (patterns: in the order given, "other" last), parameters in module order.
    """
    shared = model.shared_parameters()
    if isinstance(blocks, str):
        if blocks not in BLOCK_CHOICES:
            raise ValueError(f"blocks must be one of {BLOCK_CHOICES} or a list of parameter-name "
                             f"patterns, found {blocks!r}")
        name_of = block_name if blocks == "layers" else _fine_block
        labelled = [(name_of(n), n, p) for n, p in shared]
        order = list(dict.fromkeys(b for b, _, _ in labelled))
    else:
        patterns = list(blocks)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(f"blocks: a list of non-empty parameter-name patterns expected, "
                             f"found {blocks!r}")
        unused = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n, _ in shared)]
        if unused:
            raise ValueError(f"blocks: patterns {unused} match no shared parameter; names look "
                             f"like {[n for n, _ in shared[:3]]}")
        labelled = [(next((p for p in patterns if fnmatch.fnmatchcase(n, p)), "other"), n, q)
                    for n, q in shared]
        order = [*patterns, "other"]
    return sorted(labelled, key=lambda x: order.index(x[0]))  # stable: module order kept


def gradient_engine(model: MultitaskModel, blocks: str | Sequence[str], rows: int
                    ) -> tuple[GradientEngine, str | list[str]]:
    """A GradientEngine with ``rows`` rows of J over the shared parameters in ``blocks``."""
    grouped = parameter_blocks(model, blocks)
    engine = GradientEngine([p for _, _, p in grouped], [b for b, _, _ in grouped],
                            num_tasks=rows)
    return engine, blocks if isinstance(blocks, str) else list(blocks)


# --- private helpers ---------------------------------------------------------------------------


def _task_gradients(model: MultitaskModel, batches: Sequence[tuple[str, dict]],
                    engine: GradientEngine) -> tuple[np.ndarray, np.ndarray]:
    """(losses [n], block Gramians [B, n, n]) of one J row per (task, batch), dropout off:
    `gradlab.step.task_gradients` with the model's task table, no SMART term."""
    was_training = model.training
    model.eval()
    try:
        result = task_gradients(model, batches, engine, loss=TaskLoss(specs=_specs(model)),
                                smart=False)
        if result.fault is not None:
            raise FloatingPointError(result.fault)
        return result.losses.numpy(), result.block_gramians.numpy()
    finally:
        for p in [*engine.params, *(p for _, p in model.head_parameters())]:
            p.grad = None
        model.train(was_training)


def _specs(model) -> Mapping:
    return getattr(model, "task_specs", TASKS)


def _batch(loaded: LoadedModel, tokenized: TokenizedTask, index) -> dict:
    return collate(tokenized, index, layout=loaded.model.layout(tokenized.task),
                   max_length=loaded.config.max_length, **special_token_ids(loaded.tokenizer))


def _fine_block(name: str) -> str:
    """'fine' block of an encoder parameter name."""
    if "word_embeddings" in name:
        return "word_embeddings"
    match = re.search(r"(?:^|\.)layers?\.(\d+)\.(.*)", name)
    if match:
        part = "attention" if match.group(2).startswith("attention") else "ffn"
        return f"layer.{match.group(1)}.{part}"
    head = name.split(".", 1)[0]
    return "other_embeddings" if head == "embeddings" else head


def _task_examples(task: str, value: Any, limit: int | None) -> TaskExamples:
    """TaskExamples from a task file path, a TaskExamples or a list of (texts..., label)
    tuples."""
    if isinstance(value, TaskExamples):
        if value.task != task:
            raise ValueError(f"examples[{task!r}] holds examples of task {value.task!r}")
        if not value.labelled:
            raise ValueError(f"examples[{task!r}] has no labels (read from an unlabelled "
                             "file): a gradient needs the label")
        if len(value) == 0:
            raise ValueError(f"examples[{task!r}] is empty")
        if limit is None or limit >= len(value):
            return value
        return dataclasses.replace(
            value, ids=value.ids[:limit], texts=value.texts[:limit],
            labels=np.asarray(value.labels)[:limit], line_numbers=value.line_numbers[:limit],
            source_stat=None)
    spec = DEFAULT_READERS[task]
    if isinstance(value, str | Path):
        return read_task_file(Path(value), spec, task=task, limit=limit)
    if isinstance(value, tuple) and value and isinstance(value[0], str):
        raise TypeError(f"examples[{task!r}] must be a list of examples; found one tuple "
                        f"{value!r} (wrap it in a list)")
    rows = list(value)[:limit]
    width = len(spec.text_columns) + 1
    texts, labels = [], []
    lo, hi = spec.label_range
    for k, row in enumerate(rows):
        if not isinstance(row, Sequence) or isinstance(row, str) or len(row) != width:
            raise ValueError(f"examples[{task!r}][{k}] must be a tuple of {width - 1} "
                             f"sentence(s) and a label, found {row!r}")
        *text, label = row
        if not all(isinstance(s, str) and s.strip() for s in text):
            raise ValueError(f"examples[{task!r}][{k}]: sentences must be non-empty strings, "
                             f"found {text!r}")
        if isinstance(label, bool) or not isinstance(label, int | float | np.number) \
                or not lo <= label <= hi or (spec.label_kind != "regression" and
                                             (float(label) != int(label) or
                                              (spec.label_kind == "binary" and
                                               label not in (lo, hi)))):
            raise ValueError(f"examples[{task!r}][{k}]: label {label!r} is not a valid "
                             f"{spec.label_kind} label in [{lo}, {hi}]")
        texts.append(tuple(text))
        labels.append(label)
    if not rows:
        raise ValueError(f"examples[{task!r}] is empty")
    if spec.label_kind == "class":
        values = np.array([int(v - lo) for v in labels], dtype=np.int64)
    elif spec.label_kind == "binary":
        values = np.array([int(v == hi) for v in labels], dtype=np.int64)
    else:
        values = np.array(labels, dtype=np.float32)
    n = len(rows)
    return TaskExamples(task, Path("<examples>"), [str(k) for k in range(n)], texts, values,
                        list(range(1, n + 1)), [], spec)
