"""Task data: reading the TSV task files, validation, a tokenization cache, batching.

This module is the public face of the data layer and locates the data folder
(:func:`resolve_data_dir`, :func:`load_task`); the rest lives in :mod:`gradlab.data_files`
(reader specs, reading and validating files), :mod:`gradlab.data_tokenize` (tokenization
cache) and :mod:`gradlab.data_batching` (collation, batching), re-exported here.

The files are the CS224N multitask-BERT TSVs (``../shared/data``): a header row naming the
columns (its first cell is empty: the unnamed row index), then one example per line. They are
read with no quoting at all: literal runs of double quotes are part of the text. Malformed
rows are skipped with one :class:`DataWarning` (or refused with ``strict=True``); labels that
are present but invalid are :class:`DataError` s, since they mean bad data, not a broken row.

Example (run by the tests)::

    examples = read_task_file(path, DEFAULT_READERS["sts"], task="sts")
    tokenized = tokenize_texts(examples, tokenizer)
    batcher = TaskBatcher(len(tokenized), batch_size=8, seed=0, task="sts")
    batch = collate(tokenized, next(batcher), layout="cross", max_length=128,
                    **special_token_ids(tokenizer))
    batch["input_ids"].shape  # [8, L], L = longest sequence of the batch
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from gradlab.data_batching import TaskBatcher, bucketed_batches, collate
from gradlab.data_files import (
    DEFAULT_FILES,
    DEFAULT_READERS,
    DataError,
    DataWarning,
    ReaderSpec,
    TaskExamples,
    read_task_file,
)
from gradlab.data_tokenize import (
    TokenizedTask,
    clear_tokenization_cache,
    special_token_ids,
    tokenize_texts,
)

__all__ = [
    "DEFAULT_FILES",
    "DEFAULT_READERS",
    "DataError",
    "DataWarning",
    "ReaderSpec",
    "TaskBatcher",
    "TaskExamples",
    "TokenizedTask",
    "load_task",
    "bucketed_batches",
    "clear_tokenization_cache",
    "collate",
    "read_task_file",
    "resolve_data_dir",
    "special_token_ids",
    "tokenize_texts",
]


# ---------------------------------------------------------------------------------------------
# Locating the data folder and the built-in tasks' files
# ---------------------------------------------------------------------------------------------


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``explicit``, else ``$GRADLAB_DATA``, else the first of ``./data``,
    ``../shared/data`` (from the working directory) and ``<repo root>/../shared/data`` that
    holds a task file.

    An explicit folder or ``GRADLAB_DATA`` that does not exist is an error rather than a reason
    to fall back silently. Raises FileNotFoundError listing every place tried.
    """
    if explicit is not None:
        candidates = [(Path(explicit), "explicit argument", False)]
    elif os.environ.get("GRADLAB_DATA"):
        candidates = [(Path(os.environ["GRADLAB_DATA"]), "$GRADLAB_DATA", False)]
    else:
        repo_root = Path(__file__).resolve().parent.parent
        candidates = [
            (Path.cwd() / "data", "./data", True),
            (Path.cwd().parent / "shared" / "data", "../shared/data", True),
            (repo_root.parent / "shared" / "data", "<repo root>/../shared/data", True),
        ]
    tried = []
    task_files = {name for pair in DEFAULT_FILES.values() for name in pair}
    for path, origin, needs_task_file in candidates:
        if not path.is_dir():
            tried.append(f"{path} ({origin}: no such directory)")
        elif needs_task_file and not any((path / name).is_file() for name in task_files):
            tried.append(f"{path} ({origin}: holds none of {sorted(task_files)})")
        else:
            return path.resolve()
    raise FileNotFoundError("no task data folder found; tried: " + "; ".join(tried))



def load_task(
    task: str,
    split: Literal["train", "dev"],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    strict: bool = False,
    limit: int | None = None,
) -> TaskExamples:
    """Read the default file of a built-in ``task`` ("sst", "para", "sts") for ``split``
    ("train"/"dev") from the data folder: examples for notebooks and per-example gradients
    (`gradlab.per_example`). Runs read their files through their task table instead."""
    if task not in DEFAULT_FILES:
        raise ValueError(f"task must be one of {sorted(DEFAULT_FILES)}, found {task!r}")
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train' or 'dev', found {split!r}")
    filename = DEFAULT_FILES[task][0 if split == "train" else 1]
    path = resolve_data_dir(data_dir) / filename
    return read_task_file(path, DEFAULT_READERS[task], task=task, strict=strict, limit=limit)
