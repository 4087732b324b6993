"""Mirror a run to other formats: Parquet (one file per frame) and TensorBoard event files.

The run store stays the source of truth; these are read-only copies written after (or
while) a run trains. Exporting again replaces the copy: TensorBoard shows each point once.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from gradlab.run import Run
from gradlab.store_schema import ENCODER

_SUFFIX = ".gradlab"  # marks the event files gradlab wrote (other files are left alone)


def to_tensorboard(run: Run, logdir: str | Path, window: int = 50) -> Path:
    """Write the run as TensorBoard scalars into ``logdir``, replacing the event files an
    earlier export of the same run wrote there (so a re-export never duplicates a point;
    other event files in ``logdir`` are kept). Give each run its own folder (``tb/<run>``):
    TensorBoard merges every event file of a folder into one run.

    Tags (``<source>``: train or probe; blocks as the run names them, e.g. ``layer.0``):

    - ``loss/<task>``, ``train/<scalar>[/<task>]``, ``dev/<task>/<metric>``;
    - ``cosine/<source>/<pair>`` and ``norm/<source>/<task>`` (whole encoder);
    - ``cosine_block/<source>/<block>/<pair>``, ``norm_block/<source>/<block>/<task>``;
    - ``weight/<source>/<task>`` (``weight_block/<source>/<block>/<task>`` for blockwise
      methods), the effective task weights;
    - ``projection_rate/<task_i>-><task_j>``: the share of the last ``window`` steps in
      which PCGrad projected task_i's gradient off task_j's (runs with projection events).

    Needs the ``tensorboard`` package (``pip install 'gradlab[tensorboard]'``).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except (ImportError, ModuleNotFoundError) as err:
        raise ImportError("TensorBoard export needs the tensorboard package: "
                          "pip install 'gradlab[tensorboard]' (or pip install tensorboard)"
                          ) from err
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    suffix = f".{_safe(run.name)}{_SUFFIX}"
    points = list(_points(run, window))  # read everything before touching the old files
    staging = Path(tempfile.mkdtemp(prefix=".gradlab-export-", dir=logdir))
    try:
        writer = SummaryWriter(log_dir=str(staging), filename_suffix=suffix)
        try:
            for tag, value, step in points:
                writer.add_scalar(tag, value, step)
        finally:
            writer.close()
        for old in logdir.glob(f"events.out.tfevents.*{suffix}"):
            old.unlink()
        for new in staging.iterdir():
            new.replace(logdir / new.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return logdir


def _points(run: Run, window: int) -> Iterator[tuple[str, float, int]]:
    """(tag, value, step) of every scalar to_tensorboard writes; NaN values are skipped."""
    for row in run.losses().itertuples():
        yield f"loss/{row.task}", row.value, row.step
    scalars = run.scalars()
    for row in scalars[scalars["name"] != "loss"].itertuples():
        yield f"train/{row.name}" + (f"/{row.task}" if row.task else ""), row.value, row.step
    for row in run.evals().itertuples():
        yield f"dev/{row.task}/{row.metric}", row.value, row.step
    for row in _defined(run.cosines()).itertuples():
        yield f"{_where('cosine', row.source, row.block)}/{row.pair}", row.value, row.step
    for row in _defined(run.norms()).itertuples():
        yield f"{_where('norm', row.source, row.block)}/{row.task}", row.value, row.step
    for row in _defined(run.weights(source=None)).itertuples():
        block = row.block or ENCODER  # '' : weights of the whole update
        yield f"{_where('weight', row.source, block)}/{row.task}", row.value, row.step
    if len(run.projections()):
        rate = run.projection_rate(window=window)
        for row in _defined(rate, "rate").itertuples():
            yield f"projection_rate/{row.task_i}->{row.task_j}", row.rate, row.step


def _where(kind: str, source: str, block: str) -> str:
    """``kind/source`` for the whole encoder, ``kind_block/source/block`` for one block."""
    return f"{kind}/{source}" if block == ENCODER else f"{kind}_block/{source}/{block}"


def _defined(frame: pd.DataFrame, column: str = "value") -> pd.DataFrame:
    return frame.dropna(subset=[column])


def _safe(name: str) -> str:
    """A run name as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "run"


__all__ = ["to_tensorboard"]
