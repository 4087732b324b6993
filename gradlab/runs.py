"""Several runs read together: `load_runs(paths) -> Runs`, whose accessors concatenate.

`Runs` has every frame accessor of `gradlab.run.Run` (the list `ACCESSORS`), with the same
signature and documentation; each calls the accessor on every run that has what was asked
for and concatenates the frames (the identity columns run, method, seed, schedule tell the
runs apart).

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from gradlab.store import RunWriter
    >>> root = Path(tempfile.mkdtemp())
    >>> for seed in (0, 1):
    ...     with RunWriter(root / f"s{seed}", name=f"s{seed}", config={}, tasks=["sst"],
    ...                    blocks=[("layer.0", 2)], method="sum", seed=seed,
    ...                    schedule="joint") as w:
    ...         w.log_scalars(0, {"loss": 0.5 + seed}, task="sst")
    >>> load_runs(root).losses()[["run", "seed", "step", "value"]]
      run  seed  step  value
    0  s0     0     0    0.5
    1  s1     1     0    1.5
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gradlab.run import NoGradientDataError, Run, load_run
from gradlab.run_frames import COLUMNS, write_parquet
from gradlab.store_schema import ENCODER, STORE_FILENAME, StoreError, store_file

__all__ = ["ACCESSORS", "Runs", "load_runs"]

#: The `Run` accessors that `Runs` forwards (one per frame kind, in `run_frames.COLUMNS`).
ACCESSORS = tuple(COLUMNS)

# Keyword -> (table, column) of the names a run may lack: a run without the asked-for source,
# split or scalar name is skipped; asking for one that no run has is an error.
_PRESENT = {"source": ("gramians", "source"), "split": ("evals", "split"),
            "name": ("scalars", "name")}


def load_runs(paths: Iterable[Path | str | Run] | Path | str) -> Runs:
    """Open several runs; their accessors return the concatenation (identity columns tell
    them apart). ``paths`` is a list of run directories / store files / `Run` objects, or one
    folder: a run directory, or a folder whose subfolders are run directories."""
    if isinstance(paths, (str, Path)):
        root = Path(paths)
        if store_file(root).is_file():
            paths = [root]
        elif root.is_dir():
            paths = sorted(d for d in root.iterdir() if (d / STORE_FILENAME).is_file())
            if not paths:
                raise StoreError(f"no run stores ({STORE_FILENAME}) in {root} or its subfolders",
                                 root)
        else:
            raise StoreError(f"no run store or runs folder at {root}", root)
    runs = [p if isinstance(p, Run) else load_run(p) for p in paths]
    return Runs(runs)


def _forwarding(names: Sequence[str]) -> Callable[[type], type]:
    """Class decorator: give the class one method per `Run` accessor in ``names``, with that
    accessor's signature (for help() and completion) and a docstring naming what it does."""

    def forwarder(name: str) -> Callable[..., pd.DataFrame]:
        accessor = getattr(Run, name)
        signature = inspect.signature(accessor)

        def forward(self: Runs, *args: Any, **kwargs: Any) -> pd.DataFrame:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            options = {k: v for k, v in bound.arguments.items() if k != "self"}
            return self._concat(name, **options)

        forward.__name__ = name
        forward.__qualname__ = f"Runs.{name}"
        forward.__module__ = __name__
        forward.__signature__ = signature
        forward.__doc__ = (f"`Run.{name}` of every run that has what is asked for, "
                           f"concatenated.\n\n{inspect.getdoc(accessor)}")
        return forward

    def decorate(cls: type) -> type:
        for name in names:
            setattr(cls, name, forwarder(name))
        return cls

    return decorate


@_forwarding(ACCESSORS)
class Runs:
    """Several runs: the accessors of `Run` (see `ACCESSORS`), returning the runs' frames
    concatenated.

    A source, block, split or scalar name is read from the runs that have it (asking for the
    'train' source skips round-robin runs, and runs whose config never logs it); asking for
    one no run has is an error.
    """

    def __init__(self, runs: Sequence[Run]):
        """``runs``: the `Run` objects, names unique (see `load_runs`)."""
        self.runs: list[Run] = list(runs)
        if not self.runs:
            raise ValueError("load_runs: no runs given")
        names = [r.name for r in self.runs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"load_runs: run names must be unique, got duplicates {duplicates}")

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(self.runs)

    def __getitem__(self, key: int | str) -> Run:
        if isinstance(key, str):
            for run in self.runs:
                if run.name == key:
                    return run
            raise KeyError(f"no run named {key!r}; runs: {[r.name for r in self.runs]}")
        return self.runs[key]

    def __repr__(self) -> str:
        items = ", ".join(f"{r.name} ({r.method}, seed {r.seed})" for r in self.runs)
        return f"Runs({len(self.runs)} runs: {items})"

    def to_parquet(self, directory: Path | str) -> Path:
        """Write one Parquet file per accessor, each the concatenation over the runs."""
        return write_parquet(self, directory)

    def _concat(self, accessor: str, **kwargs: Any) -> pd.DataFrame:
        checks = dict(_PRESENT)
        if accessor == "weights":
            checks["source"] = ("weights", "source")
        frames, seen, never = [], {}, []
        for run in self.runs:
            run_kwargs = dict(kwargs)
            skip = False
            for key, (table, column) in checks.items():
                if kwargs.get(key) is not None:
                    present = run.reader.distinct(table, column)
                    seen.setdefault(key, set()).update(present)
                    skip = skip or (bool(present) and kwargs[key] not in present)
            if kwargs.get("blocks") is not None:
                asked = kwargs["blocks"]
                asked = [asked] if isinstance(asked, str) else list(asked)
                known = [*run.blocks, ENCODER]
                seen.setdefault("blocks", set()).update(known)
                run_kwargs["blocks"] = [b for b in asked if b in known]
                skip = skip or not run_kwargs["blocks"]
            if not skip:
                try:
                    frames.append(getattr(run, accessor)(**run_kwargs))
                except NoGradientDataError as err:  # it never logs the source asked for
                    never.append(err)
                    if kwargs.get("source") is None:  # it logs no gradient data at all
                        warnings.warn(f"left out of {accessor}(): {err}", stacklevel=3)
        for key, present in seen.items():
            asked = kwargs[key]
            asked = [asked] if isinstance(asked, str) else list(asked)
            missing = [a for a in asked if a not in present]
            if present and missing:
                raise ValueError(f"none of the {len(self.runs)} runs has {key} {missing}; "
                                 f"present: {sorted(present)}")
        if never and len(never) == len(self.runs):
            raise never[0]  # no run logs it: the first one says which keys to set
        if not frames:
            return self.runs[0]._finish(accessor, [])
        return pd.concat(frames, ignore_index=True)
