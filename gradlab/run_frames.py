"""The long-form frames a `gradlab.run.Run` returns: their columns, dtypes and builders.

Every accessor's frame has the identity columns (run, method, seed, schedule) and then the
columns in `COLUMNS`; the builders turn stacked arrays over steps [N, ...] into those rows.
Unordered task pairs are named "a-b" in task order ("sst-para").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["COLUMNS", "IDENTITY", "empty", "finish", "gradient_sources", "pair_frame",
           "step_frame", "task_frame", "update_frame", "write_parquet"]

IDENTITY = ("run", "method", "seed", "schedule")

INT_COLUMNS = {"step", "seed", "count", "steps", "first_step", "n"}
FLOAT_COLUMNS = {
    "value", "conflict", "conflict_rate", "share", "coefficient", "cosine", "projected", "rate",
    "weight", "predicted_delta", "measured_delta", "estimate", "lo", "hi", "level",
}
#: the columns of a calibrated estimate (`gradlab.calibration`): the window of probe steps
#: pooled is [first_step, step]; n = replicate batches per task pooled; reason: why the
#: estimate is NaN (undetermined) or has no interval, "" when fine
_ESTIMATE = ("estimate", "lo", "hi", "n", "level", "units", "reason")
COLUMNS = {  # accessor -> its columns after the identity columns
    "cosines": ("source", "step", "block", "pair", "task_a", "task_b", "value"),
    "norms": ("source", "step", "block", "task", "value"),
    "conflicts": ("source", "step", "block", "pair", "task_a", "task_b", "conflict",
                  "conflict_rate"),
    "magnitude_similarity": ("source", "step", "block", "pair", "task_a", "task_b", "value"),
    "curvature_measure": ("source", "step", "block", "pair", "task_a", "task_b", "value"),
    "condition_number": ("source", "step", "block", "value"),
    "s_conflict": ("source", "block", "pair", "count", "steps", "share"),
    "projections": ("step", "block", "pair", "task_i", "task_j", "coefficient", "cosine"),
    "projection_rate": ("step", "pair", "task_i", "task_j", "projected", "rate"),
    "weights": ("source", "step", "block", "task", "value"),
    "update_stats": ("step", "metric", "task", "value"),
    "losses": ("step", "task", "value"),
    "scalars": ("step", "name", "task", "value"),
    "evals": ("step", "split", "task", "metric", "value"),
    "counterfactuals": ("step", "counterfactual", "task", "weight", "predicted_delta",
                        "measured_delta"),
    "expected_cosines": ("step", "first_step", "block", "pair", "task_a", "task_b",
                         *_ESTIMATE),
    "within_task_cosines": ("step", "first_step", "block", "task", *_ESTIMATE),
    "noise_scale": ("step", "first_step", "block", "task", *_ESTIMATE),
    "raw_cosine_spread": ("step", "first_step", "block", "pair", "task_a", "task_b",
                          *_ESTIMATE),
}


def gradient_sources(schedule: str, config: Mapping[str, Any]) -> dict[str, str | None]:
    """Which Gramian sources a run with this schedule and config logs: source -> None when
    it logs that source, else why it never will, naming the config keys to set.

    A config without any keys (a store written without the trainer) is taken to log both.

    >>> gradient_sources("round_robin", {"probe_every": 0})["probe"]
    'probe_every=0 (no probes); set probe_every=N to log probe Gramians every N steps'
    >>> gradient_sources("joint", {"freeze_encoder": True})["train"][:20]
    'freeze_encoder=true '
    """
    if not config:
        return {"train": None, "probe": None}
    if config.get("freeze_encoder"):
        why = ("freeze_encoder=true (the encoder is frozen: no shared gradient to log); "
               "gradient data needs freeze_encoder=false")
        return {"train": why, "probe": why}
    train = None
    if schedule != "joint":
        train = (f"schedule={schedule} (one task per step has no Gramian to log); train "
                 "Gramians need schedule=joint")
    elif not config.get("log_train_gramians", True):
        train = ("log_train_gramians=false (training Gramians not logged); set "
                 "log_train_gramians=true")
    probe = None
    if not config.get("probe_every", 25):
        probe = "probe_every=0 (no probes); set probe_every=N to log probe Gramians every N steps"
    return {"train": train, "probe": probe}


def finish(kind: str, frames: Sequence[pd.DataFrame], identity: dict[str, Any]) -> pd.DataFrame:
    """Concatenate ``frames`` into accessor ``kind``'s columns and dtypes, identity first."""
    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else empty(kind)
    df = df[list(COLUMNS[kind])]
    df = df.astype({c: "int64" for c in df.columns if c in INT_COLUMNS})
    df = df.astype({c: "float64" for c in df.columns if c in FLOAT_COLUMNS})
    for k, column in enumerate(IDENTITY):
        df.insert(k, column, identity[column])
    return df.astype({"seed": "int64"})


def empty(kind: str) -> pd.DataFrame:
    """An empty frame with accessor ``kind``'s columns and dtypes (no identity columns)."""
    return pd.DataFrame({
        c: pd.Series(dtype="int64" if c in INT_COLUMNS else
                     "float64" if c in FLOAT_COLUMNS else object) for c in COLUMNS[kind]})


def pair_frame(source: str, block: str, tasks: Sequence[str], steps: np.ndarray,
               M: np.ndarray, value: str = "value") -> pd.DataFrame:
    """Long form of the upper triangle of M [N, T, T]: one row per step and pair a-b."""
    ia, ib = np.triu_indices(len(tasks), 1)
    n, p = len(steps), len(ia)
    task_a, task_b = np.array(tasks, dtype=object)[ia], np.array(tasks, dtype=object)[ib]
    return pd.DataFrame({
        "source": source, "step": np.repeat(steps, p), "block": block,
        "pair": np.tile(task_a + "-" + task_b, n), "task_a": np.tile(task_a, n),
        "task_b": np.tile(task_b, n), value: M[:, ia, ib].reshape(-1),
    })


def task_frame(source: str, block: str, tasks: Sequence[str], steps: np.ndarray,
               V: np.ndarray) -> pd.DataFrame:
    """Long form of V [N, T]: one row per step and task."""
    return pd.DataFrame({"source": source, "step": np.repeat(steps, len(tasks)), "block": block,
                         "task": np.tile(np.array(tasks, dtype=object), len(steps)),
                         "value": V.reshape(-1)})


def step_frame(source: str, block: str, steps: np.ndarray, v: np.ndarray) -> pd.DataFrame:
    """One row per step of v [N]."""
    return pd.DataFrame({"source": source, "step": steps, "block": block, "value": v})


def update_frame(steps: np.ndarray, tasks: Sequence[str],
                 metrics: dict[str, np.ndarray]) -> pd.DataFrame:
    """update_stats rows from `gradlab.stats.update_statistics` over steps [N]: update_norm
    [N], cos_update_task [N, T], cos_update_mean [N]; rows sorted by step (stable)."""
    T, n = len(tasks), len(steps)
    parts = [
        pd.DataFrame({"step": steps, "metric": "update_norm", "task": "",
                      "value": metrics["update_norm"]}),
        pd.DataFrame({"step": np.repeat(steps, T), "metric": "cos_update_task",
                      "task": np.tile(np.array(tasks, dtype=object), n),
                      "value": metrics["cos_update_task"].reshape(-1)}),
        pd.DataFrame({"step": steps, "metric": "cos_update_mean", "task": "",
                      "value": metrics["cos_update_mean"]}),
    ]
    return pd.concat(parts, ignore_index=True).sort_values("step", kind="stable")


def write_parquet(runs: Any, directory: Path | str) -> Path:
    """Write one Parquet file per accessor of ``runs`` (a `Run` or `Runs`) into ``directory``:
    cosines.parquet, ..., every source of weights and every split of evals."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    calls: dict[str, dict[str, Any]] = {name: {} for name in COLUMNS}
    calls["weights"] = {"source": None}
    calls["evals"] = {"split": None}
    for name, kwargs in calls.items():
        getattr(runs, name)(**kwargs).to_parquet(out / f"{name}.parquet", index=False)
    return out
