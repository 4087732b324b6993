"""Per-task specs: what a task reads, which head it uses, its loss and its dev metrics.

SST-5 sentiment (5 classes, cross-entropy), Quora paraphrase (binary, BCE with logits) and
STS-B similarity (0-5 regression, MSE or 1 - Pearson r). Metrics come from scikit-learn and
scipy, not hand-written formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats as scipy_stats
from sklearn.metrics import accuracy_score, f1_score


@dataclass(frozen=True)
class TaskSpec:
    """A task: its kind of input, output and primary metric.

    kind: "single" (one sentence) or "pair" (two sentences).
    output: "class" (num_classes logits), "binary" (one logit) or "regression" (one value).
    primary: the dev metric the leaderboard uses (accuracy or pearson).
    """

    name: str
    label: str
    kind: str
    output: str
    num_classes: int
    primary: str


TASKS: dict[str, TaskSpec] = {
    "sst": TaskSpec("sst", "SST", "single", "class", 5, "accuracy"),
    "para": TaskSpec("para", "PARA", "pair", "binary", 1, "accuracy"),
    "sts": TaskSpec("sts", "STS", "pair", "regression", 1, "pearson"),
}


def register_aux_task(name: str, options: dict) -> TaskSpec:
    """Add a task read from any labelled sentence file (a 4th task with its own head).

    options: train, dev (files), text_columns (1 or 2 names), label_column, label_kind
    ("class" | "binary" | "regression"), num_classes (class), label_range [low, high],
    id_column (default "id"; null numbers rows by line). Registers the task's TaskSpec and
    its reader so the trainer, evaluation and checkpoints treat it like a built-in task.
    """
    from gradlab.data import DEFAULT_FILES, DEFAULT_READERS, ReaderSpec

    allowed = {"train", "dev", "text_columns", "label_column", "label_kind", "num_classes",
               "label_range", "id_column"}
    unknown = sorted(set(options) - allowed)
    missing = sorted({"train", "dev", "text_columns", "label_column", "label_kind",
                      "label_range"} - set(options))
    if unknown or missing:
        raise ValueError(f"aux_tasks[{name!r}]: unknown keys {unknown}, missing keys {missing}; "
                         f"allowed: {sorted(allowed)}")
    kind = options["label_kind"]
    if kind not in ("class", "binary", "regression"):
        raise ValueError(f"aux_tasks[{name!r}]: label_kind={kind!r} is not one of "
                         "['class', 'binary', 'regression']")
    columns = tuple(options["text_columns"])
    classes = options.get("num_classes") if kind == "class" else (2 if kind == "binary" else None)
    reader = ReaderSpec(columns, options["label_column"], kind, classes,
                        tuple(options["label_range"]), options.get("id_column", "id"))
    spec = TaskSpec(name, name.upper(), "single" if len(columns) == 1 else "pair", kind,
                    classes if kind == "class" else 1,
                    "pearson" if kind == "regression" else "accuracy")
    TASKS[name] = spec
    DEFAULT_READERS[name] = reader
    DEFAULT_FILES[name] = (options["train"], options["dev"])
    return spec


def task_loss(spec: TaskSpec, predictions: torch.Tensor, labels: torch.Tensor, sts_loss: str = "mse"
              ) -> torch.Tensor:
    """Mean loss of a batch.

    predictions: [B, C] logits (class), [B] logit (binary) or [B] value (regression).
    labels: [B] int64 (class) or float32 (binary, regression).
    """
    if spec.output == "class":
        return F.cross_entropy(predictions, labels)
    if spec.output == "binary":
        return F.binary_cross_entropy_with_logits(predictions, labels)
    if sts_loss == "pearson":
        return pearson_loss(predictions, labels)
    return F.mse_loss(predictions, labels)


def pearson_loss(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - Pearson r between predictions [B] and labels [B] (0 for a perfect linear fit).

    A batch with constant predictions or labels has no defined r; the loss is then 1 (no
    correlation), with a finite gradient.
    """
    p = predictions - predictions.mean()
    y = labels - labels.mean()
    denom = torch.sqrt((p * p).sum() * (y * y).sum()).clamp_min(1e-8)
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


def overall_metrics(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of the primary metrics, and the course leaderboard score (SST + PARA + (1 + r)/2)/3.

    The score is defined only when all three default tasks were evaluated.
    """
    primaries = [per_task[t][TASKS[t].primary] for t in per_task if t in TASKS]
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
    "overall_metrics",
    "pearson_loss",
    "predict_labels",
    "register_aux_task",
    "task_loss",
    "task_metrics",
]
