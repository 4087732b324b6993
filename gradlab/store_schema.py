"""What a run store holds: its file name, schema version, tables and the names both sides share.

The run store is one SQLite file ``run.sqlite`` per run directory. `gradlab.store` writes it
(`RunWriter`), `gradlab.store_reader` reads it; this module is the contract between them, so
neither imports the other's internals. Tables (every row carries its optimizer ``step``):

    meta             key, value: name, config (JSON), tasks, blocks, method, seed, schedule,
                     status, schema_version, created_at, resumed_at, ended_at, ...
    scalars          step, name, task, value            (task '' for global scalars)
    gramians         step, source, block, tasks, data   (data: float64 [T, T], little endian)
    replicate_gramians  step, block, tasks, replicates, data   (a probe's K replicate batches
                     per task: data float64 [K*T, K*T], rows replicate-major, row a*T + i =
                     replicate a of task i; the 'probe' Gramian is replicate 0's [T, T])
    example_gramians step, block, ids, tasks, losses, data   (an example probe: N training
                     examples' per-example gradient Gramian, data float64 [N, N]; ids, tasks
                     and losses: JSON lists [N], rows in that order; block 'encoder' = sum)
    weights          step, source, method, block, task, value   (block '' for whole-update)
    projections      step, block, task_i, task_j, coefficient, cosine
    evals            step, split, task, metric, value
    counterfactuals  step, method, task, weight, predicted_delta, measured_delta
    checkpoints      step, kind, path, created_at

NaN values are stored as SQL NULL.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "COLUMNS",
    "ENCODER",
    "SCHEMA_VERSION",
    "SOURCES",
    "STATUSES",
    "STORE_FILENAME",
    "StoreError",
    "resolve_run_dir",
    "store_file",
]

SCHEMA_VERSION = "1"
STORE_FILENAME = "run.sqlite"
SOURCES = ("train", "probe")
STATUSES = ("running", "finished", "failed", "stopped")  # what a writer records in meta
ENCODER = "encoder"  # the pseudo-block whose Gramian is the sum of the block Gramians

COLUMNS: dict[str, tuple[str, ...]] = {
    "scalars": ("step", "name", "task", "value"),
    "gramians": ("step", "source", "block", "tasks", "data"),
    "replicate_gramians": ("step", "block", "tasks", "replicates", "data"),
    "example_gramians": ("step", "block", "ids", "tasks", "losses", "data"),
    "weights": ("step", "source", "method", "block", "task", "value"),
    "projections": ("step", "block", "task_i", "task_j", "coefficient", "cosine"),
    "evals": ("step", "split", "task", "metric", "value"),
    "counterfactuals": ("step", "method", "task", "weight", "predicted_delta", "measured_delta"),
    "checkpoints": ("step", "kind", "path", "created_at"),
}
_TYPES = {
    "step": "INTEGER", "value": "REAL", "coefficient": "REAL", "cosine": "REAL",
    "replicates": "INTEGER",
    "weight": "REAL", "predicted_delta": "REAL", "measured_delta": "REAL", "data": "BLOB",
}
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT)",
    *(
        f"CREATE TABLE IF NOT EXISTS {table}("
        + ", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in cols)
        + ")"
        for table, cols in COLUMNS.items()
    ),
    *(f"CREATE INDEX IF NOT EXISTS {t}_step ON {t}(step)" for t in COLUMNS),
    "CREATE INDEX IF NOT EXISTS gramians_series ON gramians(source, block, step)",
    "CREATE INDEX IF NOT EXISTS replicate_gramians_series ON replicate_gramians(block, step)",
    "CREATE INDEX IF NOT EXISTS example_gramians_series ON example_gramians(block, step)",
]


class StoreError(Exception):
    """A run store that cannot be created, written or read; the message names the file."""

    def __init__(self, message: str, path: Path | str | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


def store_file(path: Path | str) -> Path:
    """The ``run.sqlite`` of a run directory, or ``path`` itself when it names a file."""
    path = Path(path)
    return path if path.suffix == ".sqlite" or path.is_file() else path / STORE_FILENAME


def resolve_run_dir(runs_root: Path | str, name: str) -> Path:
    """The directory of run ``name`` inside ``runs_root``, refusing names that would escape it.

    A run name is one path component: not empty, not '.' or '..', no '/' or '\\', not absolute.
    """
    if not isinstance(name, str):
        raise TypeError(f"run name must be a str, got {type(name).__name__} {name!r}")
    bad = (
        not name.strip()
        or name in (".", "..")
        or any(sep in name for sep in ("/", "\\", "\0"))
        or Path(name).is_absolute()
        or Path(name).name != name
    )
    if bad:
        raise ValueError(
            f"invalid run name {name!r}: it must be a single folder name inside {str(runs_root)!r} "
            "(not empty, no '/' or '\\', not '.' or '..', not an absolute path)"
        )
    root = Path(runs_root)
    run_dir = root / name
    if run_dir.resolve().parent != root.resolve():
        raise ValueError(f"invalid run name {name!r}: {run_dir} resolves outside {root}")
    return run_dir


def check_names(what: str, names: Sequence[str], reserved: Sequence[str] = ()) -> None:
    """Refuse an empty list, duplicates, non-strings and ``reserved`` names."""
    names = list(names)
    bad = [n for n in names if not isinstance(n, str) or n in reserved]
    if not names or bad or len(set(names)) != len(names):
        extra = f" other than {list(reserved)}" if reserved else ""
        raise ValueError(f"{what} must be distinct non-empty strings{extra}, got {names}")


def check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    """Refuse ``value`` unless it is one of ``allowed``, naming both."""
    if value not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {value!r}")
