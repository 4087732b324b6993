"""The run store: one SQLite file ``run.sqlite`` per run directory; write it, read it, live.

It holds raw facts only (config, scalars, per-block Gramians, weights, projection events,
evals, counterfactuals, checkpoints); every statistic is derived at read time by
`gradlab.stats` (see `gradlab.run`), so there is one source of truth. This module is the
public face of three parts:

- `gradlab.store_schema`: the file name, schema version, tables, `StoreError`, `store_file`;
- `gradlab.store_writer`: `RunWriter`, batched transactions in WAL mode, so a notebook reads
  while the trainer writes and a run killed at any instant leaves a consistent file;
- `gradlab.store_reader`: `open_store_readonly`, `read_meta`, `StoreReader` (every query that
  reads a store) and `run_status`, which tells a live run from a dead one by the run lock
  that a writer holds while open (`gradlab.rundir.is_locked`).

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> run_dir = Path(tempfile.mkdtemp()) / "demo"
    >>> with RunWriter(run_dir, name="demo", config={}, tasks=["sst", "para"],
    ...                blocks=[("layer.0", 10)], method="sum", seed=0,
    ...                schedule="joint") as writer:
    ...     writer.log_scalars(0, {"loss": 0.7}, task="sst")
    ...     run_status(run_dir)
    'running'
    >>> conn = open_store_readonly(run_dir)
    >>> conn.execute("SELECT step, name, task, value FROM scalars").fetchall()
    [(0, 'loss', 'sst', 0.7)]
    >>> conn.close()
    >>> run_status(run_dir)
    'finished'
"""

from __future__ import annotations

from gradlab.store_reader import (
    RUN_STATUSES,
    StoreReader,
    open_store_readonly,
    read_meta,
    run_status,
)
from gradlab.store_schema import (
    ENCODER,
    SCHEMA_VERSION,
    SOURCES,
    STATUSES,
    STORE_FILENAME,
    StoreError,
    resolve_run_dir,
    store_file,
)
from gradlab.store_writer import RunWriter

__all__ = [
    "ENCODER",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "SOURCES",
    "STATUSES",
    "STORE_FILENAME",
    "RunWriter",
    "StoreError",
    "StoreReader",
    "open_store_readonly",
    "read_meta",
    "resolve_run_dir",
    "run_status",
    "store_file",
]
