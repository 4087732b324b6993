"""Sweeps: one run per grid point and seed, resumable, ending in a results table.

``run_sweep(config, ["method=sum,pcgrad", "lr=5e-5,1e-4"], [0, 1, 2], "runs/sweep", [])``
trains the cartesian product of the grid values times the seeds (keys joined by ":" vary
together: "method:schedule=sum:joint,pcgrad:joint,sum:round_robin" is three points, not
nine), each run in
``<runs_dir>/<name>`` with a name made from its point ("method-pcgrad_lr-5e-05_seed-0").
Calling it again continues where it stopped: a finished run is skipped, an unfinished one
resumes from its last checkpoint, or, without one, starts over after its folder is moved to
``<runs_dir>/_failed/<name>.failed-<timestamp>`` (nothing is ever deleted; the folder sits
apart so that ``gradlab.load_runs(runs_dir)`` never sees two runs of one name). A run whose
lock another process holds (a second sweep on the same folder) is running there: it is
skipped and reported as such, never moved or trained twice.

Outputs: ``results.csv`` (one row per run: grid values, seed, status, every final dev metric
as ``<task>.<metric>``, wall time), rewritten after every run, and, when the method (or the
schedule) varies, ``comparison.csv``: `gradlab.significance.compare_methods` over the seeds
within each setting of the other grid keys.

Example (the CLI: ``gradlab sweep configs/x.yaml --grid method=sum,pcgrad --seeds 0,1,2``):
    >>> table = run_sweep("configs/pcgrad.yaml", ["method=sum,pcgrad"], [0, 1, 2],
    ...                   "runs/sweep", ["steps=200"])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gradlab.config import (
    DEPRECATED_KEYS,
    ConfigError,
    TrainConfig,
    config_keys,
    load_config,
    parse_overrides,
    parse_value,
)
from gradlab.sweep_one import _run_one

__all__ = ["SweepError", "SweepRun", "grid_config_keys", "parse_grid", "plan_sweep", "run_name",
           "run_sweep"]

RESERVED_KEYS = ("seed", "name", "runs_dir")  # set by the sweep itself
_MAX_NAME = 120


class SweepError(RuntimeError):
    """Some runs of a sweep failed; the others ran and the tables were written."""


@dataclass
class SweepRun:
    """One run of a sweep: its grid point, seed, folder name and config keys."""

    point: dict[str, Any]
    seed: int
    name: str
    values: dict[str, Any] = field(default_factory=dict)  # the config keys the sweep sets
    variant: str = ""  # what the comparison calls it: the method, or e.g. "round_robin"
    config: TrainConfig | None = None  # the file and values merged and validated: what trains


def run_sweep(config: str | os.PathLike[str] | None, grid: Sequence[str], seeds: Sequence[int],
              runs_dir: str | os.PathLike[str],
              overrides: Sequence[str] | Mapping[str, Any] | None = None, *,
              baseline: str = "sum", raise_on_failure: bool = True) -> pd.DataFrame:
    """Run every (grid point, seed) not finished yet; return the results table.

    config: YAML config file (or None: defaults). grid: items "key=v1,v2,..." whose values
    are read like config overrides (YAML scalars; brackets keep lists whole:
    "tasks=[sst,sts],[sst,para]"). seeds: one run per point and seed. overrides: config
    keys shared by every run ("key=value" strings or a mapping). baseline: the method the
    comparison table tests the others against (the first method of the grid when absent).
    A run that raises is recorded as failed and the sweep goes on; at the end
    `SweepError` lists the failures (unless ``raise_on_failure=False``).
    """
    runs_dir = Path(runs_dir)
    runs = plan_sweep(config, grid, seeds, runs_dir, overrides)
    grid_keys = grid_config_keys(parse_grid(grid))
    rows: list[dict[str, Any]] = []
    failures, elsewhere = [], []
    for i, run in enumerate(runs, start=1):
        prefix = f"[{i}/{len(runs)}] {run.name}:"
        row = _run_one(run, runs_dir, prefix)
        rows.append(row)
        if row["status"] == "running":
            elsewhere.append(run.name)
        elif row["status"] != "finished":
            failures.append(f"{run.name}: {row['error']}")
        table = _results_table(rows, grid_keys)
        _write_csv(table, runs_dir / "results.csv")
    table = _results_table(rows, grid_keys)
    comparison = _comparison(table, grid_keys, baseline)
    if comparison is not None:
        _write_csv(comparison, runs_dir / "comparison.csv")
    running = f", {len(elsewhere)} running in another process" if elsewhere else ""
    print(f"sweep: {len(runs)} runs, {len(failures)} failed{running}; results in "
          f"{runs_dir / 'results.csv'}", flush=True)
    if failures and raise_on_failure:
        raise SweepError(f"{len(failures)} of {len(runs)} runs failed (the others finished; "
                         f"see {runs_dir / 'results.csv'}):\n  " + "\n  ".join(failures))
    return table


def plan_sweep(config: str | os.PathLike[str] | None, grid: Sequence[str], seeds: Sequence[int],
               runs_dir: str | os.PathLike[str],
               overrides: Sequence[str] | Mapping[str, Any] | None = None) -> list[SweepRun]:
    """The runs of a sweep, every config validated first (one `ConfigError` lists all)."""
    axes = parse_grid(grid)
    shared = parse_overrides(overrides)
    problems = []
    for key in RESERVED_KEYS:
        if key in shared:
            problems.append(f"override {key!r} is set by the sweep itself (use --seeds / "
                            "--runs-dir; names come from the grid point)")
    for key in grid_config_keys(axes):
        if key in shared:
            problems.append(f"{key!r} is both a grid key and an override")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        problems.append(f"seeds must be a non-empty list of integers, found {seeds!r}")
    elif len(set(seeds)) != len(seeds):
        problems.append(f"seeds {seeds} list a seed twice")
    if problems:
        raise ConfigError(problems, "sweep")
    runs, names = [], {}
    for values in itertools.product(*axes.values()):
        point: dict[str, Any] = {}
        for key, value in zip(axes, values, strict=True):
            point.update(value if ":" in key else {key: value})  # linked keys: a mapping
        for seed in seeds:
            name = run_name(point, seed)
            if name in names:
                problems.append(f"grid points {names[name]} and {point} (seed {seed}) both "
                                f"give the run name {name!r}")
                continue
            names[name] = point
            run_values = {**shared, **point, "seed": seed, "name": name,
                          "runs_dir": str(runs_dir)}
            try:
                cfg = load_config(config, dict(run_values))
            except ConfigError as err:
                problems += [f"{name}: {p}" for p in err.problems if not p.startswith("valid")]
                continue
            runs.append(SweepRun(point, seed, name, run_values,
                                 _variant(cfg.method, cfg.schedule), cfg))
    if problems:
        raise ConfigError(problems, "sweep")
    return runs


def parse_grid(grid: Sequence[str]) -> dict[str, list[Any]]:
    """Grid items "key=v1,v2" -> {key: [v1, v2]}, values parsed like config overrides.

    Commas inside brackets or braces do not split: "tasks=[sst,sts],[sst,para]" has two
    values. Linked keys vary together: "method:schedule=sum:joint,sum:round_robin" ->
    {"method:schedule": [{"method": "sum", "schedule": "joint"}, {"method": "sum",
    "schedule": "round_robin"}]}. Unknown, reserved and repeated keys, empty values and
    linked values with the wrong number of parts are errors, all at once.
    """
    if isinstance(grid, str):
        raise TypeError(f"grid must be a list of 'key=v1,v2' items, found the string {grid!r}")
    axes: dict[str, list[Any]] = {}
    problems = []
    valid = [*config_keys(), *DEPRECATED_KEYS]  # renamed keys: run names keep their spelling
    seen: set[str] = set()
    for item in grid:
        key, sep, raw = str(item).partition("=")
        keys = [k.strip() for k in key.split(":")]
        key = ":".join(keys)
        if not sep or not all(keys):
            problems.append(f"grid item {item!r} is not of the form key=v1,v2 "
                            "(or key1:key2=a1:a2,b1:b2)")
            continue
        for k in keys:
            if k in RESERVED_KEYS:
                problems.append(f"grid key {k!r} is set by the sweep itself (use --seeds)")
            elif k not in valid:
                problems.append(f"grid key {k!r} is not a config key")
            if k in seen:
                problems.append(f"grid key {k!r} is given twice")
            seen.add(k)
        tokens = _split_top_level(raw)
        if not tokens or any(not t.strip() for t in tokens):
            problems.append(f"grid item {item!r} has an empty value")
            continue
        values: list[Any] = []
        for token in tokens:
            if len(keys) == 1:
                values.append(parse_value(token.strip()))
                continue
            parts = _split_top_level(token, ":")
            if len(parts) != len(keys) or any(not part.strip() for part in parts):
                problems.append(f"grid item {item!r}: value {token.strip()!r} needs "
                                f"{len(keys)} parts separated by ':', one per key {keys}")
                continue
            values.append({k: parse_value(part.strip()) for k, part in zip(keys, parts,
                                                                          strict=True)})
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            problems.append(f"grid item {item!r} lists a value twice")
        axes[key] = values
    if problems:
        raise ConfigError(problems, "sweep grid")
    return axes


def grid_config_keys(axes: Mapping[str, Any]) -> list[str]:
    """The config keys a parsed grid sets, linked keys ("a:b") split, in grid order."""
    return [k for key in axes for k in key.split(":")]


def run_name(point: Mapping[str, Any], seed: int) -> str:
    """The folder name of a run: "key-value" parts joined by "_", then "seed-<seed>".

    Characters other than letters, digits and ``. _ + -`` become "-"; lists join with "+".
    Names longer than 120 characters are cut and end in a hash of the full name.
    """
    parts = [f"{_sanitize(key)}-{_sanitize(_format(value))}" for key, value in point.items()]
    name = "_".join(parts)
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        name = f"{name[:_MAX_NAME - 11]}-{digest}"
    return f"{name}_seed-{seed}" if name else f"seed-{seed}"


# --- one run ---------------------------------------------------------------------------------


# --- tables ----------------------------------------------------------------------------------


def _results_table(rows: list[dict[str, Any]], grid_keys: list[str]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    for key in grid_keys:  # lists and mappings as their name form: one cell, one label
        table[key] = table[key].map(lambda v: v if _is_scalar(v) else _format(v))
    first = ["run", *grid_keys, "seed", "variant", "status", "action", "wall_time"]
    metric_columns = sorted((c for c in table.columns if c not in (*first, "error")),
                            key=_metric_order)
    return table[[c for c in first if c in table.columns] + metric_columns + ["error"]]


def _comparison(table: pd.DataFrame, grid_keys: list[str], baseline: str
                ) -> pd.DataFrame | None:
    """compare_methods over seeds within each setting of the other grid keys (or None)."""
    from gradlab.significance import compare_methods

    if not {"method", "schedule"} & set(grid_keys):
        return None
    done = table[table["status"] == "finished"]
    if done["variant"].nunique() < 2:
        return None
    others = [k for k in grid_keys if k not in ("method", "schedule")]
    metric_columns = [c for c in done.columns if "." in c]
    long = done.drop(columns=[k for k in ("method",) if k in done.columns]).rename(
        columns={"variant": "method"}).melt(
        id_vars=["method", "seed", *others], value_vars=metric_columns, var_name="what")
    long = long.dropna(subset=["value"])
    long[["task", "metric"]] = long["what"].str.split(".", n=1, expand=True)
    frames = []
    groups = long.groupby(others, sort=False, dropna=False) if others else [((), long)]
    for key, part in groups:
        present = list(dict.fromkeys(part["method"]))
        base = baseline if baseline in present else present[0]
        result = compare_methods(part[["method", "seed", "task", "metric", "value"]], base)
        key = key if isinstance(key, tuple) else (key,)
        for position, (column, value) in enumerate(zip(others, key, strict=True)):
            result.insert(position, column, value)
        result.insert(result.columns.get_loc("diff"), "baseline", base)
        frames.append(result)
    return pd.concat(frames, ignore_index=True)


def _metric_order(column: str) -> tuple[int, str]:
    """"<task>.<metric>" columns in task order (sst, para, sts, others), overall last."""
    from gradlab.tasks import TASKS

    task = column.split(".", 1)[0]
    known = [*TASKS, "overall"]
    return (known.index(task) if task in known else len(TASKS), column)


def _variant(method: str, schedule: str) -> str:
    """What a run is compared as (as in gradlab.plot): the method, or the schedule for a
    round-robin/sequential run of sum."""
    if schedule in ("", "joint") or method == schedule:
        return method
    return schedule if method in ("sum", "mean") else f"{method} ({schedule})"


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    """Atomically: a reader never sees half a table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)


# --- parsing helpers -------------------------------------------------------------------------


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside [...] and {...}."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(depth - 1, 0)
        elif char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts if text.strip() else []


def _format(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "+".join(_format(v) for v in value)
    if isinstance(value, Mapping):
        return "+".join(f"{k}-{_format(v)}" for k, v in value.items())
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "x"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
