"""The training loop, read top to bottom: ``gradlab.train(config)``.

``build_parts`` turns the config into the run's parts (the config never leaks into them);
then one flat loop. Every step: evaluation, checkpoint and probe when due; the schedule
names the active tasks; ``train_step`` fills J, asks the method for task weights and writes
wᵀJ to ``.grad``; AdamW and the LR schedule step; the monitor logs raw facts to the run
store. A NaN or infinite loss or gradient stops the run naming the task, step and block
(``nonfinite="error"``) or skips the step and counts it (``nonfinite="skip"``, stopping
once more than ``max_skipped_share`` of the steps were skipped); the last good checkpoint
is never overwritten. ``train(..., resume=True)`` continues a crashed or killed run from its
checkpoint and ends bit for bit as the uninterrupted run would have (on CPU; see
``gradlab.resume``). ``train(..., background=True)`` trains in a separate process
and returns a `gradlab.background.BackgroundTraining` handle (progress, ``wait``, ``stop``).

Run names: ``name=None`` (the default) gives each run a new folder,
``<method>-<schedule>-<YYYYmmdd-HHMMSS>`` (`default_run_name`), so training twice never
collides; an existing run folder is refused unless ``resume=True`` (continue it) or
``overwrite=True`` (replace it, unless a live process is writing it).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from gradlab import checkpoint as ckpt
from gradlab import resume as resume_state
from gradlab.build import Parts, build_parts
from gradlab.config import TrainConfig, load_config, replace, to_dict
from gradlab.distributed import DistInfo, NullWriter, init_from_env
from gradlab.evaluate import evaluate
from gradlab.monitor import Monitor
from gradlab.probe import example_probe, probe
from gradlab.run_frames import gradient_sources
from gradlab.rundir import (
    RunLock,
    RunLockedError,
    check_run_folder,
    is_locked,
    remove_leftovers,
    write_atomic,
)
from gradlab.step import train_step
from gradlab.store import STORE_FILENAME, RunWriter, StoreError, resolve_run_dir


class NonFiniteError(FloatingPointError):
    """A loss or gradient was NaN or infinite (names the task, step and block)."""


class TrainingStopped(KeyboardInterrupt):
    """The run was asked to stop (``BackgroundTraining.stop``): it saved its checkpoint and
    recorded status 'stopped'; continue it with ``train(..., resume=True)``."""


@dataclass
class RunHandle:
    """What ``train`` returns: where the run lives and how it ended."""

    path: Path
    config: TrainConfig
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    wall_time: float = 0.0
    skipped_steps: int = 0

    @property
    def name(self) -> str:
        return self.path.name

    def load(self):  # -> gradlab.run.Run
        """The run's store as a ``gradlab.Run`` (tidy DataFrames)."""
        from gradlab.run import load_run

        return load_run(self.path)


def train(config: TrainConfig | str | Path | None = None, *, background: bool = False,
          resume: bool = False, overwrite: bool = False,
          _after_step: Callable[[int, torch.nn.Module], None] | None = None,
          _stop_requested: Callable[[], bool] | None = None,
          **overrides: Any):  # -> RunHandle | gradlab.background.BackgroundTraining
    """Train a multitask model and log every step to ``<runs_dir>/<name>/run.sqlite``.

    config: a TrainConfig, a YAML path, or None (defaults); overrides: config keys. Without a
    ``name`` the run gets a new one, ``<method>-<schedule>-<YYYYmmdd-HHMMSS>``.
    background: train in a separate process and return at once a
    `gradlab.background.BackgroundTraining` (``.run``, ``.progress``, ``.wait()``,
    ``.stop()``); the process ends with the one that started it (a notebook's kernel).
    Otherwise train here and return a `RunHandle` when done.
    resume: continue the run ``<runs_dir>/<name>`` from its newest readable checkpoint, with
    the same config (only ``RESUMABLE_CHANGES`` may differ); it ends as the uninterrupted run
    would have, bit for bit on CPU.
    overwrite: replace an existing run folder ``<runs_dir>/<name>`` (refused with
    `gradlab.rundir.RunLockedError` while a live process writes it). Without ``resume`` or
    ``overwrite`` an existing run folder is refused (FileExistsError).
    _after_step: private test hook, called as ``_after_step(step, model)`` after every
    training step (skipped or not); tests use it to simulate crashes and inject faults.
    _stop_requested: private, polled at every step; when it returns True the run saves its
    checkpoint (unless save_checkpoints=false) and raises `TrainingStopped`.

    Example:
        >>> handle = gradlab.train(method="pcgrad", steps=20, train_limit=64,  # doctest: +SKIP
        ...                        tiny_encoder={"hidden_size": 32})
        >>> handle.load().cosines(source="train")  # doctest: +SKIP
        >>> job = gradlab.train(method="pcgrad", background=True)  # doctest: +SKIP
        >>> job.progress, job.wait()  # doctest: +SKIP
    """
    cfg = resolve_config(config, overrides, resume=resume)
    if resume and overwrite:
        raise ValueError("resume=True continues the run folder and overwrite=True replaces "
                         "it; pass one of them")
    _warn_without_gradient_data(cfg)
    if background:
        if _after_step is not None or _stop_requested is not None:
            raise TypeError("background=True takes no _after_step or _stop_requested hook")
        from gradlab.background import start_training

        return start_training(cfg, resume=resume, overwrite=overwrite)
    run_dir = resolve_run_dir(Path(cfg.runs_dir), cfg.name)
    dist = init_from_env(cfg.device)  # torchrun: every rank trains, only rank 0 writes
    if dist.is_main and not overwrite:
        check_run_folder(run_dir, resume)  # before any data or model is loaded
    if dist.is_main and overwrite and is_locked(run_dir):  # this process's writers count too
        raise RunLockedError(run_dir)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:  # one process at a time per run folder
        with RunLock(run_dir) if dist.is_main else nullcontext():
            if dist.is_main and overwrite:  # under the lock: no live writer is in it
                _clear_run_folder(run_dir)
                check_run_folder(run_dir, resume=False)
            return _train(cfg, run_dir, dist, resume, _after_step, _stop_requested)
    finally:
        torch.set_num_threads(threads)


def resolve_config(config: TrainConfig | str | Path | None, overrides: dict[str, Any], *,
                   resume: bool = False) -> TrainConfig:
    """The config of ``train(config, **overrides)``, its run name set (`default_run_name`)."""
    if isinstance(config, TrainConfig):
        cfg = replace(config, **overrides)
    else:
        cfg = load_config(config, overrides)
    if cfg.name is None:
        if resume:
            raise ValueError("resume=True needs the name of the run to continue (name=...)")
        cfg = replace(cfg, name=default_run_name(cfg.method, cfg.schedule, cfg.runs_dir))
    return cfg


def default_run_name(method: str, schedule: str, runs_dir: str | Path) -> str:
    """``<method>-<schedule>-<YYYYmmdd-HHMMSS>`` (local time), with ``-2``, ``-3``, ... added
    when a run folder of that name exists in ``runs_dir`` already.

    >>> default_run_name("pcgrad", "joint", "runs")  # doctest: +SKIP
    'pcgrad-joint-20261130-184512'
    """
    base = f"{method}-{schedule}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, k = base, 1
    while (Path(runs_dir) / name).exists():
        k += 1
        name = f"{base}-{k}"
    return name


def _train(cfg: TrainConfig, run_dir: Path, dist: DistInfo, resume: bool,
           after_step: Callable[[int, torch.nn.Module], None] | None,
           stop_requested: Callable[[], bool] | None) -> RunHandle:
    """The loop. Its parts come from ``build_parts``; of the config it reads only when to
    evaluate, probe and checkpoint, the non-finite policy, what to log and the run's names."""
    t_start = time.perf_counter()
    checkpoints = run_dir / "checkpoints"
    if dist.is_main:  # temporary files of writers killed before their rename
        remove_leftovers(run_dir)
    found = resume_state.find_resume_point(run_dir, cfg) if resume else None  # before loading
    parts = build_parts(cfg, dist)
    progress = resume_state.Progress()
    if found is not None:  # last, as it sets the RNG states
        progress = resume_state.restore(found, parts)
        if dist.is_main and cfg.checkpoint_every and cfg.keep_checkpoints > 0:
            # a run killed between a save and its rotation left one step-N too many
            ckpt.rotate_checkpoints(checkpoints, cfg.keep_checkpoints, progress.step)
    start, total, config = progress.step, parts.total_steps, to_dict(cfg)
    if dist.is_main and not (run_dir / "config.yaml").is_file():
        write_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    writer = NullWriter(cfg.method) if not dist.is_main else RunWriter(
        run_dir, name=cfg.name, config=config, tasks=parts.tasks,
        blocks=[(b.name, b.numel) for b in parts.engine.blocks], method=cfg.method,
        seed=cfg.seed, schedule=cfg.schedule, resume=(run_dir / STORE_FILENAME).exists())
    monitor = Monitor(writer, parts.tasks, parts.engine.block_names)
    # a frozen encoder has no shared gradients: nothing to take a Gramian of or to probe
    instrumented = parts.engine.num_params > 0
    if not instrumented and dist.is_main and (cfg.probe_every or cfg.log_train_gramians):
        warnings.warn("the encoder is frozen (freeze_encoder=true): no shared gradients, so no "
                      "Gramians, probes or counterfactuals are logged", stacklevel=3)

    def save(kinds: list[str], step: int, rng: tuple) -> None:
        # Every row before this checkpoint is committed first, so a run resumed from it never
        # has a gap in its store. A model that is not finite is never saved.
        if not dist.is_main:
            return
        writer.flush()
        bad = _nonfinite_parameter(parts.model)
        if bad is not None:
            raise NonFiniteError(f"step {step}: parameter {bad!r} is not finite; not saving "
                                 "it" + _last_good(checkpoints))
        progress.saves = list(kinds)
        progress.wall_time = wall_before + time.perf_counter() - t_start
        resume_state.save(checkpoints, kinds, parts, step=step, rng=rng, progress=progress,
                          config=config)
        for kind in kinds:
            writer.log_checkpoint(step, kind, str(checkpoints / kind))

    # Everything logged at step s describes the model after s updates: step s's training
    # Gramian, its probe, and (for s > 0) the evaluation and checkpoint at the top of the
    # iteration. A resumed run restarts at the top of its checkpoint's step and redoes it,
    # except the checkpoints, which exist already.
    wall_before, saved_at_start = progress.wall_time, progress.saves
    parts.model.train()
    bar = tqdm(total=total, initial=start, disable=not cfg.progress,
               desc=f"{cfg.name} [{cfg.method}/{cfg.schedule}]")
    try:
        if resume:
            # Rows after the checkpoint are redone; the checkpoint's own rows are logged
            # again, since a kill may have come before they were committed.
            writer.truncate_after(start - 1)
            for kind in saved_at_start:
                writer.log_checkpoint(start, kind, str(checkpoints / kind))
        for step in range(start, total + 1):
            final = step == total
            saving = cfg.save_checkpoints and step > start
            kinds = []  # the step's checkpoints, saved as one unit (all or none)
            # RNG states as they are before the evaluation: a resumed run redoes it
            rng = resume_state.rng_state() if saving else None
            if step > 0 and (final or (cfg.eval_every and step % cfg.eval_every == 0)):
                progress.metrics = _evaluate(parts, writer, step, cfg.eval_batch_size,
                                             cfg.progress)
                if saving and _score(progress.metrics) > progress.best_score:
                    progress.best_score = _score(progress.metrics)
                    kinds.append("best")
            periodic = bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0
            keep = periodic and cfg.keep_checkpoints > 0
            # a stop request ends the run at the top of a step, after its evaluation (as a
            # periodic checkpoint does), so that a resume redoes exactly what follows
            stopping = not final and stop_requested is not None and stop_requested()
            if saving and (final or periodic or stopping):
                kinds += [f"step-{step}"] * keep + ["last"]
            if kinds:
                save(kinds, step, rng)
                if keep:
                    ckpt.rotate_checkpoints(checkpoints, cfg.keep_checkpoints, step)
            if stopping:
                raise TrainingStopped(f"run {cfg.name!r} stopped at step {step} of {total}; "
                                      "continue it with train(..., resume=True)")
            if instrumented and cfg.probe_every and (final or step % cfg.probe_every == 0):
                probed = probe(parts, step, parts.scheduler.get_last_lr()[0],
                               measure=cfg.measure_counterfactual)
                if probed.fault is None:
                    monitor.probe(step, probed.block_gramians, probed.losses,
                                  probed.counterfactuals,
                                  replicate_gramians=probed.replicate_gramians)
                else:
                    _nonfinite(cfg.nonfinite, f"step {step}: probe: {probed.fault}", "probe",
                               checkpoints)
                    writer.log_scalars(step, {"skipped_probe": 1.0})
            every = cfg.example_probe_every
            if every and dist.is_main and (final or step % every == 0):
                # per-example Gramians of training examples: eval mode, no training RNG used
                found = example_probe(parts, step, cfg.example_probe_size)
                writer.log_example_gramians(step, found.block_gramians.numpy(),
                                            found.block_names, found.ids, found.tasks,
                                            found.losses.numpy())
            if final:
                break

            t0 = time.perf_counter()
            active = [parts.tasks[i] for i in parts.schedule.active_tasks(step)]
            result = train_step(parts, active, step)
            if result.fault is not None:
                _nonfinite(cfg.nonfinite, f"step {step}: {result.fault}", "step", checkpoints)
                progress.skipped_steps += 1
                writer.log_scalars(step, {"skipped": 1.0})
                if progress.skipped_steps > cfg.max_skipped_share * total:  # the skip budget
                    raise NonFiniteError(
                        f"step {step}: {progress.skipped_steps} of the run's {total} steps "
                        f"were skipped (non-finite loss or gradient; this one: {result.fault}), "
                        f"more than max_skipped_share={cfg.max_skipped_share} allows "
                        f"({math.floor(cfg.max_skipped_share * total)})" + _last_good(checkpoints))
                parts.optimizer.zero_grad(set_to_none=True)
                parts.scheduler.step()
            else:
                lr = parts.scheduler.get_last_lr()[0]
                parts.optimizer.step()
                parts.scheduler.step()
                monitor.train_step(step, active, result.losses, result.weights, result.output,
                                   result.block_gramians if instrumented and
                                   parts.schedule.is_joint and cfg.log_train_gramians else None,
                                   lr=lr, grad_norm=result.grad_norm,
                                   step_time=time.perf_counter() - t0)
                bar.set_postfix({t: f"{v:.3f}" for t, v in zip(active, result.losses.tolist(),
                                                               strict=True)})
            bar.update(1)
            if after_step is not None:
                after_step(step, parts.model)
    except BaseException as err:
        try:
            writer.close(status="stopped" if isinstance(err, KeyboardInterrupt) else "failed")
        except StoreError:
            pass  # keep the original error (e.g. a full disk already raised it)
        raise
    finally:
        bar.close()
    wall = wall_before + time.perf_counter() - t_start
    writer.log_scalars(total, {"wall_time": wall})
    writer.close(status="finished")
    if dist.is_main:
        write_atomic(run_dir / "metrics.json",
                     json.dumps({"metrics": progress.metrics, "wall_time": wall}, indent=1))
    return RunHandle(run_dir, cfg, progress.metrics, wall, progress.skipped_steps)


def _warn_without_gradient_data(cfg: TrainConfig) -> None:
    """Warn when the run will log no Gramian at all (nothing for the conflict figures)."""
    never = gradient_sources(cfg.schedule, to_dict(cfg))
    if all(never.values()) and not cfg.freeze_encoder:  # a frozen run has warned already
        warnings.warn(f"run {cfg.name!r} will log no gradient data (no conflict figures): "
                      + "; ".join(f"{source}: {why}" for source, why in never.items()),
                      UserWarning, stacklevel=3)


def _clear_run_folder(run_dir: Path) -> None:
    """Empty ``run_dir`` but its lock file (the caller holds the lock)."""
    for p in run_dir.iterdir():
        if p.name == ".lock":
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _nonfinite(policy: str, message: str, what: str, checkpoints: Path) -> None:
    """The non-finite policy: "error" stops the run, "skip" warns (the caller skips)."""
    if policy == "error":
        raise NonFiniteError(message + _last_good(checkpoints))
    warnings.warn(f"{message} -- {what} skipped", RuntimeWarning, stacklevel=3)


def _evaluate(parts: Parts, writer: Any, step: int, batch_size: int, progress: bool) -> dict:
    """Dev metrics of every task (rank 0 only), logged to the store."""
    if not parts.dist.is_main:
        return {}
    metrics = evaluate(parts.model, parts.dev_sets, special_ids=parts.special,
                       max_length=parts.max_length, batch_size=batch_size, progress=progress)
    for task, values in metrics.items():
        writer.log_eval(step, "dev", task, values)
    writer.flush()
    return metrics


def _score(metrics: dict) -> float:
    overall = metrics.get("overall", {})
    value = overall.get("score", overall.get("mean", -math.inf))
    return value if value is not None and math.isfinite(value) else -math.inf


def _nonfinite_parameter(model: torch.nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return name
    return None


def _last_good(checkpoints: Path) -> str:
    last = checkpoints / "last"
    try:
        step = ckpt.read_state(last)["step"]
    except (ckpt.CheckpointError, KeyError):
        return "; no checkpoint was saved"
    return f"; the last good checkpoint is kept: {last} (step {step})"


__all__ = ["NonFiniteError", "RunHandle", "TrainingStopped", "default_run_name", "resolve_config",
           "train"]
