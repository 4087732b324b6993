"""Tokenization of task examples: once per dataset and process, optionally cached on disk
(re-exported by :mod:`gradlab.data`).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gradlab.data_files import DataWarning, LabelKind, TaskExamples
from gradlab.rundir import replace

__all__ = [
    "TokenizedTask",
    "clear_tokenization_cache",
    "special_token_ids",
    "tokenize_texts",
]

Layout = Literal["single", "bi", "cross"]
_LAYOUT_SPECIALS = {"single": 2, "bi": 2, "cross": 3}  # [CLS] a [SEP] / [CLS] a [SEP] b [SEP]


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
    replace(tmp, cache_file)  # os.replace and a kill point (gradlab.rundir)


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
