"""`Run`'s example accessors: the example probes a run logged (config ``example_probe_every``)
read back as `gradlab.per_example.ExampleGradients` and as tidy frames, texts included.

An example probe stores each example's id, task and loss with the per-example Gramians
[B, N, N] (`gradlab.probe.example_probe`); the texts and labels are re-read here from the
run's training files by id (the files its config names, as ``gradlab.build`` reads them).
A mixin of `gradlab.run.Run`: it reads through the run's ``reader`` and uses its ``name``,
``method``, ``seed``, ``schedule`` and ``config``. These accessors are per run: `gradlab.Runs`
does not forward them and ``to_parquet`` does not write them (they raise, rather than return
an empty frame, for a run that logged no example probes).

    >>> run = gradlab.load_run("runs/demo/pcgrad")               # doctest: +SKIP
    >>> run.conflicting_examples(k=3)                             # doctest: +SKIP
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from gradlab.store_reader import ExampleProbe
from gradlab.store_schema import ENCODER

__all__ = ["ExampleAccessors"]

class ExampleAccessors:
    """example_probe_steps, example_gradients, example_alignment and conflicting_examples of
    a run (see `gradlab.run`)."""

    def example_probe_steps(self) -> list[int]:
        """The steps with a logged example probe, ascending (empty when the run logged none)."""
        return [p.step for p in self.reader.example_probes()]

    def example_gradients(self, step: int | None = None):  # -> ExampleGradients
        """The example probe at ``step`` (None: the last one) as an
        `gradlab.per_example.ExampleGradients` (Gramians [B, N, N], ids, tasks, losses), its
        texts and labels re-read from the run's training files by id."""
        from gradlab.per_example import ExampleGradients

        probe = self._example_probe(step)
        blocks = [b for b in probe.blocks if b != ENCODER]
        G = probe.G[[probe.blocks.index(b) for b in blocks]]
        texts, labels = self._example_texts(probe.tasks, probe.ids)
        import torch

        return ExampleGradients(block_gramians=torch.from_numpy(G), block_names=tuple(blocks),
                                ids=list(probe.ids), tasks=list(probe.tasks), texts=texts,
                                labels=labels, losses=torch.from_numpy(probe.losses))

    def example_alignment(self, step: int | None = None, block: str = ENCODER) -> pd.DataFrame:
        """One row per example x task of the example probe at ``step`` (None: the last):
        `ExampleGradients.alignment` (leave-one-out cosine of each example's gradient with
        each task's mean gradient, its norm, loss and text), with columns run, method, seed,
        schedule and step first."""
        grads = self.example_gradients(step)
        return self._with_identity(grads.alignment(block), self._resolved_step(step))

    def conflicting_examples(self, k: int = 5, step: int | None = None, block: str = ENCODER
                             ) -> pd.DataFrame:
        """The k most conflicting examples (lowest leave-one-out cosine) of each (task →
        target) pair at the example probe of ``step`` (None: the last), texts included:
        `ExampleGradients.extremes` rows of kind "conflicting", with run, method, seed,
        schedule and step first (what `gradlab.plot.conflicting_examples` takes)."""
        grads = self.example_gradients(step)
        frame = grads.extremes(k, block)
        frame = frame[frame["kind"] == "conflicting"].reset_index(drop=True)
        return self._with_identity(frame, self._resolved_step(step))

    # -- private -------------------------------------------------------------------------------

    def _example_probe(self, step: int | None) -> ExampleProbe:
        if step is not None and (isinstance(step, bool) or not isinstance(step, int | np.integer)):
            raise TypeError(f"step must be an int or None, found {step!r}")
        probes = self.reader.example_probes(step)
        if not probes:
            steps = self.example_probe_steps()
            if not steps:
                raise ValueError(f"run {self.name!r} logged no example probes (config "
                                 "example_probe_every > 0 logs them)")
            raise ValueError(f"run {self.name!r} has no example probe at step {step}; example "
                             f"probes at steps {steps}")
        return probes[-1]

    def _resolved_step(self, step: int | None) -> int:
        return int(step) if step is not None else self.example_probe_steps()[-1]

    def _with_identity(self, frame: pd.DataFrame, step: int) -> pd.DataFrame:
        frame = frame.copy()
        values = {"run": self.name, "method": self.method, "seed": self.seed,
                  "schedule": self.schedule, "step": step}
        for k, (column, value) in enumerate(values.items()):
            frame.insert(k, column, value)
        return frame.astype({"seed": "int64", "step": "int64"})

    def _example_texts(self, tasks: list[str], ids: list[str]) -> tuple[list[str], np.ndarray]:
        """Texts (a pair's sentences joined by " ||| ") and labels [N] float64 of the examples
        ``ids`` of ``tasks``, from the run's training files; an id not found there (e.g. an
        EDA-augmented row) gets text "" and label NaN."""
        texts, labels = [], np.full(len(ids), np.nan)
        for k, (task, id_) in enumerate(zip(tasks, ids, strict=True)):
            found = self._training_rows(task).get(id_)
            texts.append("" if found is None else found[0])
            if found is not None:
                labels[k] = found[1]
        return texts, labels

    @functools.cache  # noqa: B019 - one Run, a few tasks: the files are read once per task
    def _training_rows(self, task: str) -> dict[str, tuple[str, float]]:
        from gradlab.config import load_config, task_table_args
        from gradlab.data import read_task_file, resolve_data_dir
        from gradlab.tasks import task_table

        cfg = load_config(None, self.config)
        spec = task_table(**task_table_args(cfg))[task]
        path = Path(spec.file("train"))
        if not path.is_absolute():
            path = resolve_data_dir(cfg.data_dir) / path
        data = read_task_file(path, spec.reader, task=task, limit=cfg.train_limit)
        return {i: (" ||| ".join(text), float(label))
                for i, text, label in zip(data.ids, data.texts, np.asarray(data.labels),
                                          strict=True)}
