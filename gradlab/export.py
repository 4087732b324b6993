"""Mirror a run to other formats: Parquet (one file per frame) and TensorBoard event files.

The run store stays the source of truth; these are read-only copies written after (or
while) a run trains.
"""

from __future__ import annotations

from pathlib import Path

from gradlab.run import Run


def to_tensorboard(run: Run, logdir: str | Path) -> Path:
    """Write the run's losses, scalars, dev metrics and encoder cosines as TensorBoard scalars.

    Tags: ``loss/<task>``, ``train/<scalar>``, ``dev/<task>/<metric>``,
    ``cosine/<source>/<pair>`` (whole encoder). Needs the ``tensorboard`` package
    (``pip install tensorboard``).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except (ImportError, ModuleNotFoundError) as err:
        raise ImportError("TensorBoard export needs the tensorboard package: "
                          "pip install tensorboard") from err
    logdir = Path(logdir)
    writer = SummaryWriter(log_dir=str(logdir))
    try:
        for row in run.losses().itertuples():
            writer.add_scalar(f"loss/{row.task}", row.value, row.step)
        scalars = run.scalars()
        for row in scalars[scalars["name"] != "loss"].itertuples():
            tag = f"train/{row.name}" + (f"/{row.task}" if row.task else "")
            writer.add_scalar(tag, row.value, row.step)
        for row in run.evals().itertuples():
            writer.add_scalar(f"dev/{row.task}/{row.metric}", row.value, row.step)
        cos = run.cosines(blocks="encoder")
        for row in cos.dropna(subset=["value"]).itertuples():
            writer.add_scalar(f"cosine/{row.source}/{row.pair}", row.value, row.step)
    finally:
        writer.close()
    return logdir


__all__ = ["to_tensorboard"]
