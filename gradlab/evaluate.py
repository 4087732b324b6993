"""Dev-set evaluation and prediction (inference mode, length-bucketed batches)."""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gradlab.data import TokenizedTask, bucketed_batches, collate
from gradlab.model import MultitaskModel
from gradlab.tasks import TaskSpec, overall_metrics, predict_labels, task_metrics


@dataclass
class EvalSet:
    """One task's tokenized examples and how its batches are laid out."""

    task: str
    tokenized: TokenizedTask
    ids: list[str]


@torch.inference_mode()
def predict(model: MultitaskModel, eval_set: EvalSet, *, special_ids: Mapping[str, int],
            max_length: int, batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """Predicted labels [N] for every example of ``eval_set``, in file order."""
    was_training = model.training
    model.eval()
    layout = model.layout(eval_set.task)
    batches, restore = bucketed_batches(eval_set.tokenized, batch_size, layout=layout)
    outputs = []
    for index in tqdm(batches, desc=f"eval {eval_set.task}", disable=not progress, leave=False):
        batch = collate(eval_set.tokenized, index, layout=layout, max_length=max_length,
                        **special_ids)
        batch = {k: v.to(_device(model)) for k, v in batch.items()}
        outputs.append(predict_labels(model.task_specs[eval_set.task],
                                      model(eval_set.task, batch)))
    model.train(was_training)
    return np.concatenate(outputs)[restore]


def evaluate(model: MultitaskModel, eval_sets: Mapping[str, EvalSet], *,
             special_ids: Mapping[str, int], max_length: int, batch_size: int = 128,
             progress: bool = False) -> dict[str, dict[str, float]]:
    """Dev metrics per task plus ``overall`` (mean of primaries, leaderboard score), each task
    scored as the model's task table says.

    An undefined metric (a Pearson r of constant predictions, and the overall values that
    use it) is None, with a `MetricWarning` naming it: written as ``null``, metrics files
    stay strict JSON.
    """
    results: dict[str, dict[str, float | None]] = {}
    for task, eval_set in eval_sets.items():
        predicted = predict(model, eval_set, special_ids=special_ids, max_length=max_length,
                            batch_size=batch_size, progress=progress)
        results[task] = task_metrics(model.task_specs[task], predicted,
                                     eval_set.tokenized.labels)
    results["overall"] = overall_metrics({t: m for t, m in results.items() if t != "overall"},
                                         model.task_specs)
    return undefined_as_none(results)


class MetricWarning(UserWarning):
    """A metric is undefined (NaN), e.g. the Pearson r of constant predictions."""


def undefined_as_none(metrics: Mapping[str, Mapping[str, float | None]]
                      ) -> dict[str, dict[str, float | None]]:
    """``metrics`` with every NaN or infinite value replaced by None, and one `MetricWarning`
    naming them (``json.dumps(..., allow_nan=False)`` then writes strict JSON)."""
    out, undefined = {}, []
    for task, values in metrics.items():
        out[task] = {}
        for name, value in values.items():
            if value is not None and not math.isfinite(value):
                undefined.append(f"{task}.{name}")
                value = None
            out[task][name] = value
    if undefined:
        warnings.warn(f"undefined metric(s) {', '.join(undefined)} (constant predictions or "
                      "labels?): reported as null", MetricWarning, stacklevel=3)
    return out


def write_predictions(path: str | Path, ids: list[str], predicted: np.ndarray, spec: TaskSpec
                      ) -> Path:
    """Write ``id<TAB>prediction`` rows (the course's prediction file layout) of the task
    ``spec`` (its name picks the column header, its output the number format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    column = {"sst": "Predicted_Sentiment", "para": "Predicted_Is_Paraphrase",
              "sts": "Predicted_Similarity"}.get(spec.name, "prediction")
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(["id", column])
        for row_id, value in zip(ids, predicted, strict=True):
            writer.writerow([row_id, f"{value:.4f}" if spec.output == "regression"
                             else int(value)])
    return path


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


__all__ = ["EvalSet", "MetricWarning", "evaluate", "predict", "undefined_as_none",
           "write_predictions"]
