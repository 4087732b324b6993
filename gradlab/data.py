"""Task data: reading the TSV task files, validation, a tokenization cache, batching.

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

import hashlib
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Self

import numpy as np
import torch

from gradlab.seeding import derive_seed

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

LabelKind = Literal["class", "binary", "regression"]
Layout = Literal["single", "bi", "cross"]
_LAYOUT_SPECIALS = {"single": 2, "bi": 2, "cross": 3}  # [CLS] a [SEP] / [CLS] a [SEP] b [SEP]
_MAX_LISTED = 20  # line numbers / problems spelled out in one message


class DataError(ValueError):
    """A task file cannot be used: names the file and, where one is at fault, the line."""


class DataWarning(UserWarning):
    """Rows of a task file were skipped (malformed); names the file, lines and count."""


@dataclass(frozen=True)
class ReaderSpec:
    """Which columns of a task file hold what.

    text_columns: 1 name (single sentence) or 2 (sentence pair).
    label_kind: "class" (stored as class index ``value - label_range[0]``), "binary" (stored
    as 0/1: ``label_range[0]`` -> 0, ``label_range[1]`` -> 1) or "regression" (float).
    label_range: allowed label values, inclusive.
    id_column: column holding the example id; None numbers examples by line.
    """

    text_columns: tuple[str, ...]
    label_column: str
    label_kind: LabelKind
    num_classes: int | None
    label_range: tuple[float, float]
    id_column: str | None = "id"

    def __post_init__(self) -> None:
        # YAML gives lists; tuples keep the spec hashable (it is part of the cache key)
        object.__setattr__(self, "text_columns", tuple(self.text_columns))
        object.__setattr__(self, "label_range", tuple(self.label_range))
        problems = []
        if len(self.text_columns) not in (1, 2):
            problems.append(f"text_columns must name 1 or 2 columns, found {self.text_columns!r}")
        lo, hi = self.label_range
        if not lo < hi:
            problems.append(f"label_range must be (low, high) with low < high, found {(lo, hi)}")
        if self.label_kind == "class":
            span = hi - lo + 1
            if not (float(lo).is_integer() and float(hi).is_integer() and self.num_classes == span):
                problems.append(
                    f"class labels need integer label_range bounds and num_classes = "
                    f"high - low + 1, found label_range={(lo, hi)}, num_classes={self.num_classes}"
                )
        elif self.label_kind == "binary":
            if self.num_classes != 2:
                problems.append(f"binary labels need num_classes=2, found {self.num_classes}")
        elif self.label_kind == "regression":
            if self.num_classes is not None:
                problems.append(f"regression needs num_classes=None, found {self.num_classes}")
        else:
            problems.append(
                f"label_kind must be 'class', 'binary' or 'regression', found {self.label_kind!r}"
            )
        if problems:
            raise ValueError("invalid ReaderSpec: " + "; ".join(problems))


# The built-in tasks' readers and files (read-only; a run's task table, with its extra tasks
# and file changes, comes from gradlab.tasks.task_table)
DEFAULT_READERS: Mapping[str, ReaderSpec] = MappingProxyType({
    "sst": ReaderSpec(("sentence",), "sentiment", "class", 5, (0, 4)),
    "para": ReaderSpec(("sentence1", "sentence2"), "is_duplicate", "binary", 2, (0, 1)),
    "sts": ReaderSpec(("sentence1", "sentence2"), "similarity", "regression", None, (0, 5)),
})
DEFAULT_FILES: Mapping[str, tuple[str, str]] = MappingProxyType({  # task -> (train, dev file)
    "sst": ("ids-sst-train.csv", "ids-sst-dev.csv"),
    "para": ("quora-train.csv", "quora-dev.csv"),
    "sts": ("sts-train.csv", "sts-dev.csv"),
})


# ---------------------------------------------------------------------------------------------
# Locating and reading files
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


@dataclass
class TaskExamples:
    """The valid rows of one task file, in file order (N examples).

    texts: N tuples of 1 or 2 strings (the spec's text columns), verbatim.
    labels: [N] int64 (class index or 0/1) or float32 (regression); float32 NaN when the
    file was read without labels (``labelled`` False, e.g. a test file for predictions).
    line_numbers: 1-based physical line of each example in the file (the header is line 1).
    skipped: (line, reason) of each malformed row that was skipped.
    source_stat: (mtime_ns, size) of the file when read; part of the tokenization cache key.
    """

    task: str
    path: Path
    ids: list[str]
    texts: list[tuple[str, ...]]
    labels: np.ndarray
    line_numbers: list[int]
    skipped: list[tuple[int, str]]
    spec: ReaderSpec
    limit: int | None = None
    source_stat: tuple[int, int] | None = None
    labelled: bool = True

    def __len__(self) -> int:
        return len(self.ids)


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


def read_task_file(
    path: str | os.PathLike[str],
    spec: ReaderSpec,
    *,
    task: str,
    strict: bool = False,
    limit: int | None = None,
    labels: bool | None = True,
) -> TaskExamples:
    """Read one tab-separated task file with no quoting (double quotes are literal text).

    ``labels``: True reads and checks the label column (training, evaluation); False ignores
    it; None reads it when the header has it (predictions on labelled or unlabelled files).

    Malformed rows (wrong number of fields, empty text, empty label) are skipped with one
    DataWarning naming the file, lines and count; ``strict=True`` raises DataError instead.
    Raises DataError for an empty or header-only file, missing columns, bytes that are not
    UTF-8, and labels that do not parse or fall outside ``spec.label_range``.
    ``limit`` keeps the first ``limit`` valid rows (reading stops there).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, found {limit!r}")
    if labels not in (True, False, None):
        raise ValueError(f"labels must be True, False or None, found {labels!r}")
    path = Path(path)
    stat = path.stat()
    with path.open("rb") as file:
        header = _decode(next(file, b""), path, 1).lstrip("\ufeff").split("\t")
        if header == [""]:
            raise DataError(f"{path}: empty file (no header row on line 1)")
        labelled = labels is True or (labels is None and spec.label_column in header)
        needed = (*spec.text_columns, spec.label_column) if labelled else spec.text_columns
        columns = _column_indices(header, needed, spec.id_column, path)
        id_index = columns[spec.id_column] if spec.id_column is not None else None
        ids, texts, raw_labels, line_numbers, skipped = [], [], [], [], []
        for line_number, raw in enumerate(file, start=2):
            if limit is not None and len(ids) >= limit:
                break
            fields = _decode(raw, path, line_number).split("\t")
            reason = _malformed(fields, header, needed, columns)
            if reason is not None:
                skipped.append((line_number, reason))
                continue
            ids.append(fields[id_index] if id_index is not None else str(line_number))
            texts.append(tuple(fields[columns[c]] for c in spec.text_columns))
            raw_labels.append(fields[columns[spec.label_column]] if labelled else "")
            line_numbers.append(line_number)
    if not ids and not skipped:
        raise DataError(f"{path}: no data rows after the header")
    if skipped:
        listed = "; ".join(f"line {n}: {why}" for n, why in skipped[:_MAX_LISTED])
        more = f"; ... ({len(skipped) - _MAX_LISTED} more)" if len(skipped) > _MAX_LISTED else ""
        message = f"{path}: {len(skipped)} malformed row(s): {listed}{more}"
        if strict:
            raise DataError(message + " (strict=True)")
        warnings.warn(message + " -- skipped", DataWarning, stacklevel=2)
    if not ids:
        raise DataError(f"{path}: no valid rows ({len(skipped)} malformed rows skipped)")
    values = (_parse_labels(raw_labels, line_numbers, spec, path) if labelled
              else np.full(len(ids), np.nan, dtype=np.float32))
    return TaskExamples(task, path, ids, texts, values, line_numbers, skipped, spec, limit,
                        (stat.st_mtime_ns, stat.st_size), labelled)


def _decode(raw: bytes, path: Path, line_number: int) -> str:
    """One line of bytes -> str without its line ending; DataError naming file/line if not UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: line {line_number} is not valid UTF-8 (byte {raw[error.start]:#04x} at "
            f"column {error.start + 1})"
        ) from None
    return text.removesuffix("\n").removesuffix("\r")


def _column_indices(header: list[str], needed: tuple[str, ...], id_column: str | None,
                    path: Path) -> dict[str, int]:
    """Column name -> index for the ``needed`` text/label columns and the id column;
    DataError naming any missing."""
    wanted = [*needed, *([id_column] if id_column is not None else [])]
    missing = [name for name in wanted if name not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; columns found: "
                        f"{_excerpt(header)}")
    return {name: header.index(name) for name in wanted}


def _excerpt(cells: list[str], width: int = 40, count: int = 12) -> str:
    """The first ``count`` cells of a row, each cut to ``width`` characters: a bounded echo
    of a header that may be a whole file without newlines."""
    shown = [c if len(c) <= width else f"{c[:width]}... ({len(c)} characters)"
             for c in cells[:count]]
    more = f", ... ({len(cells) - count} more)" if len(cells) > count else ""
    return "[" + ", ".join(map(repr, shown)) + more + "]"


def _malformed(
    fields: list[str], header: list[str], needed: tuple[str, ...], columns: dict[str, int]
) -> str | None:
    """Why a row cannot be read (wrong field count, an empty ``needed`` text or label
    field), or None if it can."""
    if len(fields) != len(header):
        return f"{len(fields)} fields, expected {len(header)}"
    empty = [name for name in needed if not fields[columns[name]].strip()]
    return "empty " + " and ".join(empty) if empty else None


def _parse_labels(
    raw: list[str], line_numbers: list[int], spec: ReaderSpec, path: Path
) -> np.ndarray:
    """Label strings -> [N] int64 (class, binary) or float32 (regression); DataError if invalid."""
    lo, hi = spec.label_range
    kind = spec.label_kind
    allowed = {"class": f"an integer in {lo:g}..{hi:g}", "binary": f"{lo:g} or {hi:g}",
               "regression": f"a number in [{lo:g}, {hi:g}]"}[kind]
    values, problems = [], []
    for text, line_number in zip(raw, line_numbers, strict=True):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if kind == "class":
            ok = value.is_integer() and lo <= value <= hi
        elif kind == "binary":
            ok = value in (lo, hi)
        else:
            ok = lo <= value <= hi  # False for NaN
        if not ok:
            problems.append(f"line {line_number}: {text!r}")
        values.append(value)
    if problems:
        more = f" ... ({len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise DataError(
            f"{path}: {len(problems)} invalid {spec.label_column!r} label(s), expected "
            f"{allowed}: " + "; ".join(problems[:_MAX_LISTED]) + more
        )
    array = np.asarray(values, dtype=np.float64)
    if spec.label_kind == "class":
        return (array - lo).astype(np.int64)
    if spec.label_kind == "binary":
        return (array == hi).astype(np.int64)
    return array.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Tokenization (once per dataset and process, optionally cached on disk)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedTask:
    """Token ids of every text column of one task, WITHOUT special tokens (N examples).

    ids[c]: [total_c] int32, all of column c's sequences concatenated; sequence i is
    ``ids[c][offsets[c][i]:offsets[c][i + 1]]`` (offsets[c]: [N + 1] int64).
    labels: [N] int64 (class, binary) or float32 (regression). Arrays are read-only, since one
    object is shared through the cache.
    """

    task: str
    label_kind: LabelKind
    ids: tuple[np.ndarray, ...]
    offsets: tuple[np.ndarray, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def token_ids(self) -> tuple[list[np.ndarray], ...]:
        """Per text column, the N token-id arrays (views into ``ids``)."""
        return tuple(
            [ids[start:end] for start, end in zip(offsets[:-1], offsets[1:], strict=True)]
            for ids, offsets in zip(self.ids, self.offsets, strict=True)
        )

    def text_lengths(self, column: int) -> np.ndarray:
        """[N] number of tokens of text column ``column`` (no special tokens)."""
        return np.diff(self.offsets[column])

    def lengths(self, layout: Layout) -> np.ndarray:
        """[N] untruncated model-input length with special tokens (bi: the longer side)."""
        _check_layout(self, layout)
        if layout == "single":
            return self.text_lengths(0) + 2
        if layout == "bi":
            return np.maximum(self.text_lengths(0), self.text_lengths(1)) + 2
        return self.text_lengths(0) + self.text_lengths(1) + 3

    def count_truncated(self, max_length: int, layout: Layout) -> int:
        """Number of examples that ``collate(..., max_length=max_length)`` truncates."""
        _check_max_length(max_length, layout)
        return int((self.lengths(layout) > max_length).sum())


_TOKENIZED: dict[tuple[Any, ...], TokenizedTask] = {}


def tokenize_texts(
    examples: TaskExamples,
    tokenizer: Any,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TokenizedTask:
    """Tokenize every text column of ``examples`` once (batch call, no special tokens).

    Results are cached for the process, keyed by (resolved path, file mtime and size when read,
    reader spec, tokenizer name_or_path and vocabulary size, limit); with ``cache_dir`` also on
    disk as ``<task>-<key hash>.npz`` (no pickles). ``tokenizer`` is a (fast) HF tokenizer.
    """
    key = _cache_key(examples, tokenizer)
    if key is not None and key in _TOKENIZED:
        return _TOKENIZED[key]
    cache_file = None
    if key is not None and cache_dir is not None:
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
        cache_file = Path(cache_dir) / f"{examples.task}-{digest}.npz"
    tokenized = _load_npz(cache_file, key, examples) if cache_file is not None else None
    if tokenized is None:
        tokenized = _tokenize(examples, tokenizer)
        if cache_file is not None:
            _save_npz(cache_file, key, tokenized)
    if key is not None:
        _TOKENIZED[key] = tokenized
    return tokenized


def clear_tokenization_cache() -> None:
    """Forget every tokenized dataset held in memory (the on-disk cache is left alone)."""
    _TOKENIZED.clear()


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """``{"cls_id", "sep_id", "pad_id"}`` of a BERT-style tokenizer, as keywords for collate."""
    ids = {
        "cls_id": tokenizer.cls_token_id,
        "sep_id": tokenizer.sep_token_id,
        "pad_id": tokenizer.pad_token_id,
    }
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no {missing} token")
    return ids


def _cache_key(examples: TaskExamples, tokenizer: Any) -> tuple[Any, ...] | None:
    """The cache key, or None when the examples do not come from a file read here."""
    if examples.source_stat is None:
        return None
    return (str(Path(examples.path).resolve()), *examples.source_stat, examples.spec,
            str(tokenizer.name_or_path), len(tokenizer), examples.limit, examples.labelled)


def _tokenize(examples: TaskExamples, tokenizer: Any) -> TokenizedTask:
    ids, offsets = [], []
    for column in range(len(examples.spec.text_columns)):
        texts = [text[column] for text in examples.texts]
        encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                            return_token_type_ids=False, verbose=False)["input_ids"]
        lengths = np.fromiter((len(seq) for seq in encoded), dtype=np.int64, count=len(encoded))
        offsets.append(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        ids.append(np.fromiter((t for seq in encoded for t in seq), dtype=np.int32,
                               count=int(lengths.sum())))
    return _frozen(examples.task, examples.spec.label_kind, ids, offsets, examples.labels)


def _frozen(task: str, label_kind: LabelKind, ids: Sequence[np.ndarray],
            offsets: Sequence[np.ndarray], labels: np.ndarray) -> TokenizedTask:
    arrays = [np.array(a) for a in (*ids, *offsets, labels)]  # own copies, then read-only
    for array in arrays:
        array.flags.writeable = False
    n = len(ids)
    return TokenizedTask(task, label_kind, tuple(arrays[:n]), tuple(arrays[n:2 * n]), arrays[-1])


def _save_npz(cache_file: Path, key: tuple[Any, ...], tokenized: TokenizedTask) -> None:
    """Write atomically (temporary file, then rename) so readers never see half a file."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"key": np.array(repr(key)), "labels": tokenized.labels}
    for c, (ids, offsets) in enumerate(zip(tokenized.ids, tokenized.offsets, strict=True)):
        arrays[f"ids_{c}"], arrays[f"offsets_{c}"] = ids, offsets
    tmp = cache_file.with_name(f"{cache_file.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, cache_file)


def _load_npz(cache_file: Path, key: tuple[Any, ...], examples: TaskExamples
              ) -> TokenizedTask | None:
    """The cached tokenization, or None if absent, unreadable or written for another key."""
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as npz:
            if str(npz["key"]) != repr(key):
                return None
            columns = len(examples.spec.text_columns)
            ids = [npz[f"ids_{c}"] for c in range(columns)]
            offsets = [npz[f"offsets_{c}"] for c in range(columns)]
            labels = npz["labels"]
    except (OSError, ValueError, KeyError) as error:
        warnings.warn(f"ignoring unreadable tokenization cache {cache_file}: {error}",
                      DataWarning, stacklevel=3)
        return None
    return _frozen(examples.task, examples.spec.label_kind, ids, offsets, labels)


# ---------------------------------------------------------------------------------------------
# Collation (dynamic padding, truncation)
# ---------------------------------------------------------------------------------------------


def collate(
    tokenized: TokenizedTask,
    indices: Sequence[int] | np.ndarray,
    *,
    layout: Layout,
    max_length: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """Model inputs for the examples ``indices`` (B of them), padded to the batch's longest.

    layout "single": [CLS] a [SEP] -> input_ids, attention_mask, token_type_ids [B, L].
    layout "bi": a and b encoded separately -> the same keys suffixed _a and _b ([B, L_a],
    [B, L_b]). layout "cross": [CLS] a [SEP] b [SEP] with token_type_ids 0 on the a part and 1
    on the b part, truncated longest-first. Each input holds at most ``max_length`` tokens.
    labels [B]: int64 for class tasks, float32 for binary and regression (BCE / MSE).
    """
    _check_layout(tokenized, layout)
    _check_max_length(max_length, layout)
    index = np.asarray(indices, dtype=np.int64)
    if index.ndim != 1 or len(index) == 0:
        raise ValueError(f"indices must be a non-empty 1-D sequence, found shape {index.shape}")
    if index.min() < 0 or index.max() >= len(tokenized):
        raise ValueError(f"indices must lie in [0, {len(tokenized)}), found {index.min()}.."
                         f"{index.max()}")
    seqs = tokenized.token_ids
    specials = (np.array([cls_id], np.int64), np.array([sep_id], np.int64))
    if layout == "cross":
        budget = max_length - 3
        inputs, types = [], []
        for i in index:
            a, b = seqs[0][i], seqs[1][i]
            keep_a, keep_b = _longest_first(len(a), len(b), budget)
            inputs.append(np.concatenate([specials[0], a[:keep_a], specials[1],
                                          b[:keep_b], specials[1]]))
            types.append(np.repeat([0, 1], [keep_a + 2, keep_b + 1]))
        batch = _pad(inputs, types, pad_id)
    else:
        batch = {}
        for column, suffix in ((0, "_a"), (1, "_b")) if layout == "bi" else ((0, ""),):
            inputs = [np.concatenate([specials[0], seqs[column][i][: max_length - 2],
                                      specials[1]]) for i in index]
            types = [np.zeros(len(x), np.int64) for x in inputs]
            batch |= {k + suffix: v for k, v in _pad(inputs, types, pad_id).items()}
    labels = torch.from_numpy(np.array(tokenized.labels[index]))
    batch["labels"] = labels.long() if tokenized.label_kind == "class" else labels.float()
    return batch


def _longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Tokens kept of a and b when trimming the longer one (b on ties) until both fit."""
    if len_a + len_b <= budget:
        return len_a, len_b
    if min(len_a, len_b) <= budget // 2:  # the shorter one fits whole
        return (len_a, budget - len_a) if len_a <= len_b else (budget - len_b, len_b)
    return budget - budget // 2, budget // 2


def _pad(inputs: list[np.ndarray], types: list[np.ndarray], pad_id: int
         ) -> dict[str, torch.Tensor]:
    """Right-pad B sequences to the longest: input_ids, attention_mask, token_type_ids [B, L]."""
    width = max(len(x) for x in inputs)
    input_ids = np.full((len(inputs), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(inputs), width), dtype=np.int64)
    token_type_ids = np.zeros((len(inputs), width), dtype=np.int64)
    for row, (ids, kinds) in enumerate(zip(inputs, types, strict=True)):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        token_type_ids[row, : len(ids)] = kinds
    return {"input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "token_type_ids": torch.from_numpy(token_type_ids)}


def _check_layout(tokenized: TokenizedTask, layout: str) -> None:
    columns = len(tokenized.ids)
    if layout not in _LAYOUT_SPECIALS:
        raise ValueError(f"layout must be 'single', 'bi' or 'cross', found {layout!r}")
    if (layout == "single") != (columns == 1):
        raise ValueError(f"layout {layout!r} does not fit task {tokenized.task!r} with "
                         f"{columns} text column(s): use 'single' for 1, 'bi' or 'cross' for 2")


def _check_max_length(max_length: int, layout: str) -> None:
    least = _LAYOUT_SPECIALS.get(layout, 2) + 1
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < least:
        raise ValueError(f"max_length must be an int >= {least} for layout {layout!r}, "
                         f"found {max_length!r}")


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


class TaskBatcher:
    """Endless index batches [batch_size] int64 over one task's N examples, reshuffled each epoch.

    Epoch e's order is ``torch.randperm(N)`` from a private torch.Generator seeded from
    (seed, task, e), so batches never depend on the global RNG and a state restored with
    ``load_state_dict`` continues with exactly the batches the original run would have drawn.
    With ``drop_last`` an epoch's final partial batch is skipped.
    """

    def __init__(self, num_examples: int, batch_size: int, *, seed: int, task: str,
                 drop_last: bool = False) -> None:
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, found {num_examples}")
        if batch_size < 1 or (drop_last and batch_size > num_examples):
            limit = f" and <= num_examples={num_examples} with drop_last" if drop_last else ""
            raise ValueError(f"batch_size must be >= 1{limit}, found {batch_size}")
        self.num_examples, self.batch_size = num_examples, batch_size
        self.seed, self.task, self.drop_last = seed, task, drop_last
        self.epoch, self.position = 0, 0  # position: examples of this epoch already served
        self._order: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (f"TaskBatcher(num_examples={self.num_examples}, batch_size={self.batch_size}, "
                f"seed={self.seed}, task={self.task!r}, drop_last={self.drop_last})")

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> np.ndarray:
        remaining = self.num_examples - self.position
        if remaining <= 0 or (self.drop_last and remaining < self.batch_size):
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        if self._order is None:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.task,
                                                                  self.epoch))
            self._order = torch.randperm(self.num_examples, generator=generator)
        batch = self._order[self.position : self.position + self.batch_size]
        self.position += len(batch)
        return batch.numpy().astype(np.int64)

    def state_dict(self) -> dict[str, int]:
        """Plain ints: seed, epoch, position (+ num_examples and batch_size, checked on load)."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "num_examples": self.num_examples, "batch_size": self.batch_size}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from ``state``; ValueError if it was saved for another seed, size or batch."""
        for name in ("seed", "num_examples", "batch_size"):
            if name in state and int(state[name]) != getattr(self, name):
                raise ValueError(f"state_dict {name}={state[name]} does not match this "
                                 f"batcher's {name}={getattr(self, name)} ({self!r})")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.num_examples:
            raise ValueError(f"state_dict needs epoch >= 0 and position in 0..{self.num_examples}"
                             f", found epoch={epoch}, position={position}")
        self.epoch, self.position, self._order = epoch, position, None


def bucketed_batches(
    tokenized: TokenizedTask, batch_size: int, *, layout: Layout | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """Evaluation batches of similar lengths (longest first), covering each example once.

    Returns (batches, restore): batches is a list of index arrays [<= batch_size]; if
    ``outputs`` [N, ...] stacks per-batch outputs in batch order, ``outputs[restore]`` is in the
    file's order. Lengths are those of ``layout`` (default: "single" or "cross").
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    layout = layout or ("single" if len(tokenized.ids) == 1 else "cross")
    order = np.argsort(-tokenized.lengths(layout), kind="stable")
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return batches, np.argsort(order, kind="stable")

