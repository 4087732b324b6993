"""Per-task specs: what a task reads, which head it uses, its loss and its dev metrics.

SST-5 sentiment (5 classes, cross-entropy), Quora paraphrase (binary, BCE with logits) and
STS-B similarity (0-5 regression, MSE or 1 - Pearson r), plus any number of extra tasks from
labelled sentence files. A run's tasks are a *task table* built from plain arguments by
`task_table` (name -> TaskSpec); nothing here is mutated at run time, so any number of runs,
each with its own tasks, can share one process. Metrics come from scikit-learn and scipy.

Example:
    >>> table = task_table(["sst", "sts"], single_head="mlp", regression_loss="pearson")
    >>> (table["sst"].head, table["sts"].loss, table["sts"].files[1])
    ('mlp', 'pearson', 'sts-dev.csv')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats as scipy_stats
from sklearn.metrics import accuracy_score, f1_score

from gradlab.config_checks import did_you_mean
from gradlab.data import DEFAULT_FILES, DEFAULT_READERS, ReaderSpec

SINGLE_HEADS = ("linear", "mlp")
PAIR_HEADS = ("bi", "cross", "cosine")
REGRESSION_LOSSES = ("mse", "pearson")
_LOSSES = {"class": ("cross_entropy",), "binary": ("bce",), "regression": REGRESSION_LOSSES}
#: keys of one ``aux_tasks`` entry (those without a default are required)
AUX_TASK_KEYS = ("train", "dev", "text_columns", "label_column", "label_kind", "num_classes",
                 "label_range", "id_column")
_AUX_REQUIRED = ("train", "dev", "text_columns", "label_column", "label_kind", "label_range")


@dataclass(frozen=True)
class TaskSpec:
    """A task: its input, output, head, loss, files and primary metric.

    kind: "single" (one sentence) or "pair" (two sentences).
    output: "class" (num_classes logits), "binary" (one logit) or "regression" (one value).
    primary: the dev metric the leaderboard uses (accuracy or pearson).
    reader: which columns of its files hold the text and the label (None: not read from files).
    files: (train file, dev file), relative to the data folder or absolute.
    head: "linear" | "mlp" (single) or "bi" | "cross" | "cosine" (pair); default linear / bi.
    loss: "cross_entropy" (class), "bce" (binary), "mse" | "pearson" (regression); default
    the first of these for the output.
    """

    name: str
    label: str
    kind: str
    output: str
    num_classes: int
    primary: str
    reader: ReaderSpec | None = None
    files: tuple[str, str] | None = None
    head: str | None = None
    loss: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in ("single", "pair"):
            problems.append(f"kind={self.kind!r} is not one of ['single', 'pair']")
        if self.output not in _LOSSES:
            problems.append(f"output={self.output!r} is not one of {list(_LOSSES)}")
        heads = SINGLE_HEADS if self.kind == "single" else PAIR_HEADS
        if self.head is None:
            object.__setattr__(self, "head", heads[0])
        elif self.head not in heads:
            problems.append(f"head={self.head!r} is not one of {list(heads)} for a "
                            f"{self.kind}-sentence task")
        losses = _LOSSES.get(self.output, ())
        if self.loss is None and losses:
            object.__setattr__(self, "loss", losses[0])
        elif losses and self.loss not in losses:
            problems.append(f"loss={self.loss!r} is not one of {list(losses)} for output "
                            f"{self.output!r}")
        if self.files is not None:
            object.__setattr__(self, "files", tuple(self.files))
        if problems:
            raise ValueError(f"invalid TaskSpec {self.name!r}: " + "; ".join(problems))

    def file(self, split: str) -> str:
        """The task's file of ``split`` ("train" or "dev")."""
        if self.files is None:
            raise ValueError(f"task {self.name!r} has no files")
        if split not in ("train", "dev"):
            raise ValueError(f"split must be 'train' or 'dev', found {split!r}")
        return self.files[0 if split == "train" else 1]


#: the built-in tasks with their default head and loss (read-only: a run's own table comes
#: from `task_table`)
TASKS: Mapping[str, TaskSpec] = MappingProxyType({
    "sst": TaskSpec("sst", "SST", "single", "class", 5, "accuracy",
                    DEFAULT_READERS["sst"], DEFAULT_FILES["sst"]),
    "para": TaskSpec("para", "PARA", "pair", "binary", 1, "accuracy",
                     DEFAULT_READERS["para"], DEFAULT_FILES["para"]),
    "sts": TaskSpec("sts", "STS", "pair", "regression", 1, "pearson",
                    DEFAULT_READERS["sts"], DEFAULT_FILES["sts"]),
})


class TaskTableError(ValueError):
    """Every problem found while building a task table (``problems``: one line each)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def task_table(
    tasks: Sequence[str],
    *,
    aux_tasks: Mapping[str, Mapping[str, Any]] | None = None,
    task_files: Mapping[str, Mapping[str, Any]] | None = None,
    single_head: str = "linear",
    pair_head: str = "bi",
    para_head: str | None = None,
    sts_head: str | None = None,
    regression_loss: str = "mse",
) -> dict[str, TaskSpec]:
    """The specs of one run's ``tasks``, in their order: the built-in tasks (sst, para, sts)
    and the ``aux_tasks`` defined for this run, with their heads, losses and files.

    aux_tasks: name -> options of an extra task from any labelled sentence file: train, dev
    (files), text_columns (1 or 2 names), label_column, label_kind ("class" | "binary" |
    "regression"), num_classes (class), label_range [low, high], id_column (default "id";
    null numbers rows by line). Every entry is checked, listed in ``tasks`` or not.
    task_files: task -> changes of its files (train, dev) and reader (text_columns,
    label_column, ... as in `gradlab.data.ReaderSpec`).
    single_head: head of every single-sentence task ("linear" | "mlp"). pair_head: head of
    PARA and STS ("bi" | "cross" | "cosine"; PARA uses "bi" for "cosine"), unless
    para_head / sts_head say otherwise; extra pair tasks use "bi". regression_loss: loss of
    every regression task ("mse" | "pearson": 1 - Pearson r over the batch).

    Raises `TaskTableError` listing every problem, each naming the argument and the value.
    """
    problems: list[str] = []
    _check_choice(problems, "single_head", single_head, SINGLE_HEADS)
    _check_choice(problems, "pair_head", pair_head, PAIR_HEADS)
    for key, value in (("para_head", para_head), ("sts_head", sts_head)):
        if value is not None:
            _check_choice(problems, key, value, PAIR_HEADS)
    if para_head == "cosine" and not isinstance(tasks, str) and "para" in (tasks or []):
        problems.append("para_head='cosine' is for STS only; use 'bi' or 'cross' for PARA")
    _check_choice(problems, "regression_loss", regression_loss, REGRESSION_LOSSES)
    aux_tasks = {} if aux_tasks is None else aux_tasks
    task_files = {} if task_files is None else task_files
    specs: dict[str, TaskSpec] = {}
    if not isinstance(aux_tasks, Mapping):
        problems.append(f"aux_tasks={aux_tasks!r} must be a mapping of task name -> options")
        aux_tasks = {}
    for name, options in aux_tasks.items():
        spec = _aux_spec(name, options, problems)
        if spec is not None:
            specs[name] = spec
    known = sorted({*TASKS, *aux_tasks})
    if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks:
        problems.append(f"tasks={tasks!r} must be a non-empty list of {known}")
        tasks = []
    elif not all(isinstance(t, str) for t in tasks):
        problems.append(f"tasks={list(tasks)!r} must be a list of task names (strings)")
        tasks = []
    else:
        for t in tasks:
            if t not in known:
                problems.append(f"tasks: unknown task {t!r}{did_you_mean(t, known)}; known "
                                f"tasks: {known} (a new task needs an aux_tasks entry)")
        if len(set(tasks)) != len(tasks):
            problems.append(f"tasks={list(tasks)!r} lists a task twice")
    if not isinstance(task_files, Mapping):
        problems.append(f"task_files={task_files!r} must be a mapping of task name -> files "
                        "and columns")
        task_files = {}
    heads = {"para": para_head or pair_head, "sts": sts_head or pair_head}
    if heads["para"] == "cosine":
        heads["para"] = "bi"
    table: dict[str, TaskSpec] = {}
    for name in tasks:
        if name in TASKS:
            base = TASKS[name]
            head = single_head if base.kind == "single" else heads[name]
        elif name in specs:
            base = specs[name]
            head = single_head if base.kind == "single" else "bi"
        else:
            continue
        loss = regression_loss if base.output == "regression" else None
        if head not in (SINGLE_HEADS if base.kind == "single" else PAIR_HEADS) or \
                (loss is not None and loss not in REGRESSION_LOSSES):
            continue  # already a problem above
        table[name] = dataclasses.replace(base, head=head, loss=loss)
    for name, changes in task_files.items():
        if name not in known:
            problems.append(f"task_files: unknown task {name!r}; known tasks: {known}")
        elif name in table:
            table[name] = _with_files(table[name], changes, problems)
        elif name in TASKS or name in specs:  # not trained in this run: checked all the same
            _with_files(TASKS.get(name) or specs[name], changes, problems)
    if problems:
        raise TaskTableError(problems)
    return table


def _check_choice(problems: list[str], key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        problems.append(f"{key}={value!r} is not one of {list(allowed)}"
                        f"{did_you_mean(value, list(allowed))}")


def _aux_spec(name: Any, options: Any, problems: list[str]) -> TaskSpec | None:
    """The spec of one aux_tasks entry (None, with the problems added, when it is invalid)."""
    where = f"aux_tasks[{name!r}]"
    if name in TASKS:
        problems.append(f"aux_tasks: {name!r} is a built-in task; choose another name")
        return None
    if not isinstance(name, str) or not name:
        problems.append(f"aux_tasks: task name {name!r} must be a non-empty string")
        return None
    if not isinstance(options, Mapping):
        problems.append(f"{where}={options!r} must be a mapping of {list(AUX_TASK_KEYS)}")
        return None
    unknown = sorted(set(options) - set(AUX_TASK_KEYS))
    missing = [k for k in _AUX_REQUIRED if k not in options]
    if unknown or missing:
        problems.append(f"{where}: unknown keys {unknown}, missing keys {missing}; "
                        f"allowed: {sorted(AUX_TASK_KEYS)}")
        return None
    kind = options["label_kind"]
    if kind not in ("class", "binary", "regression"):
        problems.append(f"{where}: label_kind={kind!r} is not one of "
                        "['class', 'binary', 'regression']")
        return None
    columns = options["text_columns"]
    if isinstance(columns, str) or not isinstance(columns, Sequence):
        problems.append(f"{where}: text_columns={columns!r} must be a list of 1 or 2 names")
        return None
    classes = options.get("num_classes") if kind == "class" else (2 if kind == "binary" else None)
    try:
        reader = ReaderSpec(tuple(columns), options["label_column"], kind, classes,
                            tuple(options["label_range"]), options.get("id_column", "id"))
    except (TypeError, ValueError) as err:
        problems.append(f"{where}: {err}")
        return None
    return TaskSpec(name, name.upper(), "single" if len(reader.text_columns) == 1 else "pair",
                    kind, classes if kind == "class" else 1,
                    "pearson" if kind == "regression" else "accuracy",
                    reader, (options["train"], options["dev"]))


def _with_files(spec: TaskSpec, changes: Any, problems: list[str]) -> TaskSpec:
    """``spec`` with its task_files entry applied (train, dev, reader fields)."""
    where = f"task_files[{spec.name!r}]"
    fields = [f.name for f in dataclasses.fields(ReaderSpec)]
    if not isinstance(changes, Mapping):
        problems.append(f"{where} must be a mapping (train, dev, text_columns, ...), found "
                        f"{changes!r}")
        return spec
    unknown = sorted(set(changes) - {"train", "dev", *fields})
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}; allowed: {['train', 'dev', *fields]}")
        return spec
    files = (changes.get("train", spec.files[0]), changes.get("dev", spec.files[1]))
    reader_changes = {k: v for k, v in changes.items() if k in fields}
    reader = spec.reader
    if reader_changes:
        try:
            reader = dataclasses.replace(spec.reader, **reader_changes)
        except (TypeError, ValueError) as err:
            problems.append(f"{where}: {err}")
            return spec
    return dataclasses.replace(spec, reader=reader, files=files)


def task_loss(spec: TaskSpec, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean loss of a batch, as ``spec.loss`` says.

    predictions: [B, C] logits (class), [B] logit (binary) or [B] value (regression).
    labels: [B] int64 (class) or float32 (binary, regression).
    """
    if spec.output == "class":
        return F.cross_entropy(predictions, labels)
    if spec.output == "binary":
        return F.binary_cross_entropy_with_logits(predictions, labels)
    if spec.loss == "pearson":
        return pearson_loss(predictions, labels)
    return F.mse_loss(predictions, labels)


def pearson_loss(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - Pearson r between predictions [B] and labels [B] (0 for a perfect linear fit).

    A batch with constant predictions or labels has no defined r; the loss is then 1 (no
    correlation), with a finite gradient.
    """
    p = predictions - predictions.mean()
    y = labels - labels.mean()
    # clamp before the square root: sqrt's derivative at 0 is infinite (0 * inf = NaN)
    denom = torch.sqrt(((p * p).sum() * (y * y).sum()).clamp_min(1e-16))
    return 1.0 - (p * y).sum() / denom


def predict_labels(spec: TaskSpec, predictions: torch.Tensor) -> np.ndarray:
    """Model outputs [B, ...] -> predicted labels [B] (class ids, 0/1, or similarity)."""
    if spec.output == "class":
        return predictions.argmax(dim=-1).cpu().numpy()
    if spec.output == "binary":
        return (predictions > 0).long().cpu().numpy()
    return predictions.float().cpu().numpy()


def task_metrics(spec: TaskSpec, predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Dev metrics of one task: SST accuracy + macro-F1, PARA accuracy + F1, STS Pearson + Spearman.

    predicted, labels: [N].
    """
    if spec.output == "class":
        return {
            "accuracy": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        }
    if spec.output == "binary":
        labels = labels.astype(np.int64)
        return {
            "accuracy": float(accuracy_score(labels, predicted)),
            "f1": float(f1_score(labels, predicted, zero_division=0)),
        }
    if np.std(predicted) == 0 or np.std(labels) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {
        "pearson": float(scipy_stats.pearsonr(predicted, labels)[0]),
        "spearman": float(scipy_stats.spearmanr(predicted, labels)[0]),
    }


def overall_metrics(per_task: Mapping[str, Mapping[str, float]],
                    specs: Mapping[str, TaskSpec] | None = None) -> dict[str, float]:
    """Mean of the primary metrics, and the course leaderboard score (SST + PARA + (1 + r)/2)/3.

    specs: the run's task table (default: the built-in tasks); tasks it lacks are left out
    of the mean. The score is defined only when all three default tasks were evaluated.
    """
    specs = TASKS if specs is None else specs
    primaries = [per_task[t][specs[t].primary] for t in per_task if t in specs]
    out = {"mean": float(np.mean(primaries))} if primaries else {}
    if all(t in per_task for t in ("sst", "para", "sts")):
        r = per_task["sts"]["pearson"]
        out["score"] = float(
            (per_task["sst"]["accuracy"] + per_task["para"]["accuracy"] + (1 + r) / 2) / 3
        )
    return out


__all__ = [
    "TASKS",
    "TaskSpec",
    "TaskTableError",
    "overall_metrics",
    "pearson_loss",
    "predict_labels",
    "task_loss",
    "task_metrics",
    "task_table",
]
