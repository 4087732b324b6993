"""Builders: the only place that reads a ``TrainConfig``; every part gets plain arguments.

``build_parts(cfg)`` turns a config into the ``Parts`` of one run (model, tokenizer, data,
batchers, engine, optimizer, scheduler, method, counterfactual methods, schedule, loss), in
an order that checks the cheap arguments (method, schedule) before any data is read. The
other builders take plain arguments, for notebooks, benchmarks and tests:

    >>> model, tokenizer = build_model("minilm", ["sst", "sts"],      # doctest: +SKIP
    ...                                tiny_encoder={"hidden_size": 32})
    >>> optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.01)  # doctest: +SKIP
    >>> method = build_method("pcgrad", {"reduction": "mean"}, seed=3)   # doctest: +SKIP

Where the config names tasks, files and heads (the task table) is read here only:
``model_from_config`` (heads), ``split_from_config`` (files, readers, EDA) and ``_loss``.
"""

from __future__ import annotations

import inspect
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from gradlab.config import TrainConfig, task_table_args
from gradlab.data import (
    ReaderSpec,
    TaskBatcher,
    collate,
    read_task_file,
    resolve_data_dir,
    special_token_ids,
    tokenize_texts,
)
from gradlab.distributed import DistInfo, shard
from gradlab.engine import GradientEngine
from gradlab.evaluate import EvalSet
from gradlab.methods import METHODS, Method, get_method
from gradlab.model import MultitaskModel, block_name, load_encoder, load_tokenizer
from gradlab.probe import probe_batch
from gradlab.schedules import Schedule, get_schedule
from gradlab.seeding import derive_seed
from gradlab.step import TaskLoss
from gradlab.tasks import TaskSpec, task_table


@dataclass
class Parts:
    """Everything one run trains with; ``train_step`` and ``probe`` read it, never a config.

    train_sets / dev_sets: task -> EvalSet; batchers: task -> TaskBatcher (index batches);
    probe_batches: task -> replicate 0 of probe step 0 (`gradlab.probe.probe_batch`; hand-built
    parts without training sets probe on these fixed batches); total_steps: optimizer steps
    of the run; head_params: every task head's parameters. seed, probe_batch_size and
    probe_replicates (K) name the probe batches; probe_engine: the K*T-row engine of the
    probes (allocated by the first probe when K > 1, `gradlab.probe.probe_engine`).
    """

    tasks: list[str]
    model: MultitaskModel
    tokenizer: Any
    special: dict[str, int]
    train_sets: dict[str, EvalSet]
    dev_sets: dict[str, EvalSet]
    batchers: dict[str, TaskBatcher]
    probe_batches: dict[str, dict[str, torch.Tensor]]
    engine: GradientEngine
    optimizer: torch.optim.Optimizer
    scheduler: Any
    method_name: str
    method: Method
    counterfactuals: dict[str, Method]
    schedule: Schedule
    total_steps: int
    loss: TaskLoss
    max_length: int
    max_grad_norm: float | None
    device: str
    dist: DistInfo = DistInfo()
    seed: int = 0
    probe_batch_size: int = 16
    probe_replicates: int = 1
    probe_engine: GradientEngine | None = None

    @property
    def head_params(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.model.head_parameters()]

    def batch(self, task: str, index: np.ndarray) -> dict[str, torch.Tensor]:
        """The model inputs of training examples ``index`` of ``task`` (this rank's share)."""
        batch = collate(self.train_sets[task].tokenized, shard(index, self.dist),
                        layout=self.model.layout(task), max_length=self.max_length,
                        **self.special)
        return {k: v.to(self.device) for k, v in batch.items()}


def build_parts(cfg: TrainConfig, dist: DistInfo | None = None) -> Parts:
    """The parts of the run ``cfg`` describes; seeds random, numpy and torch first.

    dist: this process's rank and world size (default: one process).
    """
    dist = dist or DistInfo()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002 - the legacy global RNG, for code that uses it
    torch.manual_seed(cfg.seed)
    tasks = list(cfg.tasks)
    # method and schedule first: their arguments are checked before the data is read
    method = build_method(cfg.method, cfg.method_args, cfg.seed)
    counterfactuals = build_counterfactuals(cfg.counterfactual_methods, cfg.seed)
    total = cfg.optimizer_steps  # steps x tasks for a per-task budget
    schedule = get_schedule(cfg.schedule, len(tasks), total)

    model, tokenizer = model_from_config(cfg)
    train_sets = {t: split_from_config(cfg, t, "train", tokenizer) for t in tasks}
    dev_sets = {t: split_from_config(cfg, t, "dev", tokenizer) for t in tasks}
    for t, data in train_sets.items():
        truncated = data.tokenized.count_truncated(cfg.max_length, model.layout(t))
        if truncated:
            warnings.warn(f"task {t!r}: {truncated} of {len(data.tokenized)} training "
                          f"examples are longer than max_length={cfg.max_length} tokens "
                          "and are truncated", stacklevel=3)
    batchers = {t: TaskBatcher(len(train_sets[t].tokenized), cfg.batch_size, seed=cfg.seed,
                               task=t, drop_last=cfg.drop_last) for t in tasks}
    shared = model.shared_parameters()
    engine = GradientEngine([p for _, p in shared], [block_name(n) for n, _ in shared],
                            num_tasks=len(tasks), dtype=getattr(torch, cfg.gradient_dtype))
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                encoder_lr=cfg.encoder_lr,
                                encoder_weight_decay=cfg.encoder_weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    parts = Parts(
        tasks=tasks, model=model, tokenizer=tokenizer, special=special_token_ids(tokenizer),
        train_sets=train_sets, dev_sets=dev_sets, batchers=batchers, probe_batches={},
        engine=engine, optimizer=optimizer, scheduler=scheduler, method_name=cfg.method,
        method=method, counterfactuals=counterfactuals, schedule=schedule, total_steps=total,
        loss=_loss(cfg), max_length=cfg.max_length, max_grad_norm=cfg.max_grad_norm,
        device=cfg.device, dist=dist, seed=cfg.seed, probe_batch_size=cfg.probe_size,
        probe_replicates=cfg.probe_replicates)
    parts.probe_batches = {t: probe_batch(parts, 0, t, 0) for t in tasks}
    return parts


# --- builders from plain arguments ---------------------------------------------------------


def build_model(encoder: str, tasks: Mapping[str, TaskSpec] | Sequence[str], *,
                tiny_encoder: dict | None = None, seed: int = 0, pooling: str = "mean",
                head_dropout: float = 0.1, freeze_encoder: bool = False, device: str = "cpu"
                ) -> tuple[MultitaskModel, Any]:
    """The encoder (pretrained, or a random BERT ``tiny_encoder`` drawn from ``seed``) with
    one head per task (heads drawn from ``seed`` too), and its tokenizer.

    freeze_encoder: the encoder's parameters get ``requires_grad=False``, so it builds no
    autograd graph and ``model.shared_parameters()`` is empty (J has no columns): the heads
    alone train, each on its own task's gradient.

    tasks: a task table (name -> TaskSpec, `gradlab.tasks.task_table`: heads and losses) or
    built-in task names (their default heads).
    """
    tokenizer = load_tokenizer(encoder)
    encoder_module = load_encoder(encoder, tiny=tiny_encoder, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MultitaskModel(encoder_module, tasks if isinstance(tasks, Mapping) else
                               list(tasks), pooling=pooling, dropout=head_dropout)
    if freeze_encoder:
        model.encoder.requires_grad_(False)
    return model.to(device), tokenizer


def build_optimizer(model: MultitaskModel, *, lr: float, weight_decay: float,
                    encoder_lr: float | None = None,
                    encoder_weight_decay: float | None = None) -> torch.optim.AdamW:
    """AdamW with one parameter group per part: the shared encoder (``encoder_lr``,
    ``encoder_weight_decay``; default ``lr``, ``weight_decay``) and each task head (``lr``,
    ``weight_decay``). Per-parameter AdamW makes each head's group an optimizer of its own
    (the per-task optimizers of the papers' recipes) while one object steps, checkpoints and
    schedules them all. No weight decay on biases and LayerNorm weights (the BERT recipe).
    """
    encoder_lr = lr if encoder_lr is None else encoder_lr
    encoder_wd = weight_decay if encoder_weight_decay is None else encoder_weight_decay
    parts = [("encoder", [p for _, p in model.shared_parameters()], encoder_lr, encoder_wd)]
    parts += [(f"head.{t}", list(model.heads[t].parameters()), lr, weight_decay)
              for t in model.tasks]
    groups = []
    for name, params, group_lr, wd in parts:
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups += [{"params": decay, "weight_decay": wd, "lr": group_lr, "name": name},
                   {"params": no_decay, "weight_decay": 0.0, "lr": group_lr, "name": name}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def build_method(name: str, args: Mapping[str, Any] | None = None, seed: int = 0) -> Method:
    """The method ``name`` with keyword arguments ``args``, given ``seed`` when its
    constructor takes one (methods that draw task orders or weights) and ``args`` does not
    set it. Errors as ``gradlab.get_method``'s (unknown name, argument or value)."""
    kwargs = dict(args or {})
    if name in METHODS and "seed" in inspect.signature(METHODS[name]).parameters:
        kwargs.setdefault("seed", seed)
    return get_method(name, **kwargs)


def build_counterfactuals(names: Sequence[str], seed: int = 0) -> dict[str, Method]:
    """The probes' hypothetical methods, default arguments; each seeded method gets its own
    seed ``derive_seed(seed, "counterfactual", name)``, so none shares the run method's
    random stream."""
    return {name: build_method(name, seed=derive_seed(seed, "counterfactual", name))
            for name in names}


def build_data(path: str | Path, reader: ReaderSpec, tokenizer: Any, *, task: str,
               strict: bool = False, limit: int | None = None, eda_fraction: float = 0.0,
               eda_args: Mapping[str, Any] | None = None, seed: int = 0,
               cache_dir: str | Path | None = None) -> EvalSet:
    """Read and tokenize one task file; with ``eda_fraction`` > 0, EDA-augmented copies of
    that share of its rows are added, drawn from ``derive_seed(seed, "eda", task)`` (a
    resumed run rebuilds the same data). cache_dir: where tokenizations are cached on disk
    (None: in memory only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task {task!r}: file {path} does not exist")
    examples = read_task_file(path, reader, task=task, strict=strict, limit=limit)
    if eda_fraction > 0:
        from gradlab.augment import augment_examples

        rng = np.random.default_rng(derive_seed(seed, "eda", task))
        examples = augment_examples(examples, rng, eda_fraction, **dict(eda_args or {}))
    return EvalSet(task, tokenize_texts(examples, tokenizer, cache_dir=cache_dir), examples.ids)


# --- the config's task table: files, readers, heads, losses --------------------------------


def model_from_config(cfg: TrainConfig) -> tuple[MultitaskModel, Any]:
    """The model and tokenizer a config describes (encoder weights: pretrained or seeded)."""
    return build_model(cfg.encoder, task_table(**task_table_args(cfg)),
                       tiny_encoder=cfg.tiny_encoder, seed=cfg.seed, pooling=cfg.pooling,
                       head_dropout=cfg.head_dropout, freeze_encoder=cfg.freeze_encoder,
                       device=cfg.device)


def split_from_config(cfg: TrainConfig, task: str, split: str, tokenizer: Any) -> EvalSet:
    """Read and tokenize one task's split ("train" or "dev") as the config says: its file
    and reader (the run's task table, ``task_files`` applied), limit, strictness, and EDA for
    ``eda_tasks``."""
    spec = task_table(**task_table_args(cfg))[task]
    path = Path(spec.file(split))
    if not path.is_absolute():
        path = resolve_data_dir(cfg.data_dir) / path
    if not path.is_file():
        raise FileNotFoundError(f"task {task!r}: {split} file {path} does not exist")
    augment = split == "train" and task in cfg.eda_tasks
    return build_data(path, spec.reader, tokenizer, task=task, strict=cfg.strict_data,
                      limit=cfg.train_limit if split == "train" else cfg.dev_limit,
                      eda_fraction=cfg.eda_fraction if augment else 0.0,
                      eda_args=cfg.eda_args, seed=cfg.seed, cache_dir=cfg.tokenization_cache)


def _loss(cfg: TrainConfig) -> TaskLoss:
    return TaskLoss(specs=task_table(**task_table_args(cfg)), precision=cfg.precision,
                    smart_weight=dict(cfg.smart_weight), smart_args=dict(cfg.smart_args))


__all__ = ["Parts", "build_counterfactuals", "build_data", "build_method", "build_model",
           "build_optimizer", "build_parts", "model_from_config", "split_from_config"]
