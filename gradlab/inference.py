"""Loading a checkpoint for evaluation and prediction."""

from __future__ import annotations

from pathlib import Path

import torch

from gradlab.build import model_from_config as build_model
from gradlab.build import split_from_config as load_split
from gradlab.checkpoint import CheckpointError, compare_keys, load_checkpoint, resolve_checkpoint
from gradlab.config import config_from_dict, parse_overrides
from gradlab.data import DataError, read_task_file, special_token_ids, tokenize_texts
from gradlab.evaluate import EvalSet, evaluate, predict, write_predictions

# Config keys that define the model's parameters: a checkpoint fixes them.
MODEL_KEYS = ("tasks", "encoder", "tiny_encoder", "pooling", "single_head", "pair_head",
              "para_head", "sts_head")


def load_model(checkpoint: str | Path, overrides: list[str] | None = None):
    """(model, tokenizer, config) of a checkpoint folder or a run folder (its best checkpoint).

    overrides: key=value changes that do not alter the model (data_dir, dev_limit, ...).
    """
    path = resolve_checkpoint(checkpoint)
    model_state, _, state = load_checkpoint(path, training_state=False)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path / 'state.json'} holds no config")
    values = dict(state["config"])
    changes = parse_overrides(overrides)
    fixed = sorted(set(changes) & set(MODEL_KEYS))
    if fixed:
        raise ValueError(f"overrides {fixed} would change the model; a checkpoint's model "
                         f"is fixed by its own config ({path / 'state.json'})")
    values.update(changes)  # validated with the checkpoint's config, not the defaults
    cfg = config_from_dict(values, str(path / "state.json"))
    model, tokenizer = build_model(cfg)
    missing, unexpected = compare_keys(model.state_dict(), model_state)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model its config describes (a different "
            f"model or task set?): missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    _check_finite(model_state, path)
    try:
        model.load_state_dict(model_state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {err}") from None
    model.eval()
    return model, tokenizer, cfg


def evaluate_checkpoint(checkpoint: str | Path, overrides: list[str] | None = None
                        ) -> dict[str, dict[str, float]]:
    """Dev metrics per task (and overall) of a saved checkpoint."""
    model, tokenizer, cfg = load_model(checkpoint, overrides)
    dev_sets = {t: load_split(cfg, t, "dev", tokenizer) for t in cfg.tasks}
    return evaluate(model, dev_sets, special_ids=special_token_ids(tokenizer),
                    max_length=cfg.max_length, batch_size=cfg.eval_batch_size,
                    progress=cfg.progress)


def predict_file(checkpoint: str | Path, task: str, input_path: str | Path,
                 out_path: str | Path, overrides: list[str] | None = None) -> tuple[Path, int]:
    """Write ``id<TAB>prediction`` for every row of a task file: the dev-file layout, with or
    without the label column (a test file).

    Refused before anything is loaded: ``out_path`` naming the input file. Refused after
    reading the input: ids that occur twice (a DataError naming each id and its lines), since
    the prediction file is keyed by id.
    """
    input_path, out_path = Path(input_path), Path(out_path)
    if out_path.resolve() == input_path.resolve() or (
            out_path.exists() and input_path.exists() and out_path.samefile(input_path)):
        raise ValueError(f"the output file {out_path} is the input file {input_path}: the "
                         "predictions would overwrite it; choose another --out")
    model, tokenizer, cfg = load_model(checkpoint, overrides)
    same = [t for t in cfg.tasks if t.lower() == task.lower()]  # --task STS is sts
    task = same[0] if task not in cfg.tasks and len(same) == 1 else task
    if task not in cfg.tasks:
        raise ValueError(f"task {task!r} is not one of the checkpoint's tasks {cfg.tasks}")
    spec = model.task_specs[task]
    examples = read_task_file(input_path, spec.reader, task=task, labels=None)
    _check_unique_ids(examples)
    eval_set = EvalSet(task, tokenize_texts(examples, tokenizer, cache_dir=cfg.tokenization_cache),
                       examples.ids)
    predicted = predict(model, eval_set, special_ids=special_token_ids(tokenizer),
                        max_length=cfg.max_length, batch_size=cfg.eval_batch_size)
    return write_predictions(out_path, examples.ids, predicted, spec), len(predicted)


def _check_finite(model_state: dict, path: Path) -> None:
    """CheckpointError naming the parameters that hold NaN or infinite values: metrics and
    predictions of such a model mean nothing."""
    bad = [name for name, t in model_state.items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(
            f"checkpoint {path}: {len(bad)} parameter tensor(s) hold NaN or infinite values "
            f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); its metrics and "
            "predictions would mean nothing (evaluate an earlier checkpoint)")


def _check_unique_ids(examples) -> None:
    lines: dict[str, list[int]] = {}
    for row_id, line in zip(examples.ids, examples.line_numbers, strict=True):
        lines.setdefault(row_id, []).append(line)
    twice = {i: n for i, n in lines.items() if len(n) > 1}
    if twice:
        listed = "; ".join(f"{i!r} on lines {', '.join(map(str, n))}"
                           for i, n in list(twice.items())[:5])
        more = f"; ... ({len(twice) - 5} more)" if len(twice) > 5 else ""
        raise DataError(f"{examples.path}: {len(twice)} id(s) occur more than once, so the "
                        f"predictions could not be told apart: {listed}{more}")


__all__ = ["evaluate_checkpoint", "load_model", "predict_file"]
