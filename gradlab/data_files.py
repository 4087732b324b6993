"""Reading and validating the TSV task files: reader specs, the built-in tasks' files, and
:func:`read_task_file` (re-exported by :mod:`gradlab.data`).

The files are the CS224N multitask-BERT TSVs (``../shared/data``): a header row naming the
columns (its first cell is empty: the unnamed row index), then one example per line. They are
read with no quoting at all: literal runs of double quotes are part of the text. Malformed
rows are skipped with one :class:`DataWarning` (or refused with ``strict=True``); labels that
are present but invalid are :class:`DataError` s, since they mean bad data, not a broken row.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np

__all__ = [
    "DEFAULT_FILES",
    "DEFAULT_READERS",
    "DataError",
    "DataWarning",
    "ReaderSpec",
    "TaskExamples",
    "read_task_file",
]

LabelKind = Literal["class", "binary", "regression"]
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
# Reading files
# ---------------------------------------------------------------------------------------------


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
