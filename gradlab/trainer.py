"""The training loop: schedule -> engine -> method -> optimizer, read top to bottom.

``train(config)`` builds the parts from the config (which never leaks into them), then runs
one flat loop. Every step: the schedule names the active tasks; for each, the engine points
``.grad`` at its row of J and one backward fills it; the method maps the Gramian to task
weights; the engine writes wᵀJ to ``.grad``; AdamW steps. The monitor logs raw facts to the
run store; probes, evaluation and checkpoints happen every N steps.

A checkpoint holds the whole training state (model, optimizer, scheduler, method states, RNG
states, data positions), so ``train(..., resume=True)`` continues a crashed or killed run and
ends bit for bit as the uninterrupted run would have (on CPU). A NaN or infinite loss or
gradient stops the run naming the task, step and block (``nonfinite="error"``) or skips the
step and counts it (``nonfinite="skip"``); the last good checkpoint is never overwritten.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
import zlib
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from gradlab import checkpoint as ckpt
from gradlab.config import TrainConfig, load_config, replace, task_table_args, to_dict, upgrade_keys
from gradlab.data import (
    TaskBatcher,
    TokenizedTask,
    collate,
    read_task_file,
    resolve_data_dir,
    special_token_ids,
    tokenize_texts,
)
from gradlab.distributed import (
    NullWriter,
    average_gradients,
    average_scalar,
    init_from_env,
    shard,
)
from gradlab.engine import GradientEngine
from gradlab.evaluate import EvalSet, evaluate
from gradlab.methods import get_method
from gradlab.model import MultitaskModel, block_name, load_encoder, load_tokenizer
from gradlab.monitor import Monitor
from gradlab.regularizers import smart_loss
from gradlab.rundir import RunLock, check_run_folder, write_atomic
from gradlab.schedules import get_schedule
from gradlab.store import STORE_FILENAME, RunWriter, StoreError, resolve_run_dir
from gradlab.tasks import task_loss, task_table


class NonFiniteError(FloatingPointError):
    """A loss or gradient was NaN or infinite (names the task, step and block)."""


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


def train(config: TrainConfig | str | Path | None = None, *, resume: bool = False,
          **overrides: Any) -> RunHandle:
    """Train a multitask model and log every step to ``<runs_dir>/<name>/run.sqlite``.

    config: a TrainConfig, a YAML path, or None (defaults); overrides: config keys.
    resume: continue the run ``<runs_dir>/<name>`` from its newest readable checkpoint, with
    the same config (only ``RESUMABLE_CHANGES`` may differ); it ends as the uninterrupted run
    would have, bit for bit on CPU. Without ``resume`` an existing run folder is refused.

    Example:
        >>> handle = gradlab.train(method="pcgrad", steps=20, train_limit=64,  # doctest: +SKIP
        ...                        tiny_encoder={"hidden_size": 32})
        >>> handle.load().cosines(source="train")  # doctest: +SKIP
    """
    cfg = _resolve_config(config, overrides)
    return Trainer(cfg, resume=resume).run()


def _resolve_config(config: TrainConfig | str | Path | None, overrides: dict[str, Any]
                    ) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return replace(config, **overrides)
    return load_config(config, overrides)


# --- building the parts from plain arguments ------------------------------------------------


def build_model(cfg: TrainConfig) -> tuple[MultitaskModel, Any]:
    """The model and tokenizer a config describes (encoder weights: pretrained or seeded)."""
    tasks = task_table(**task_table_args(cfg))  # this run's tasks, heads and losses
    tokenizer = load_tokenizer(cfg.encoder)
    encoder = load_encoder(cfg.encoder, tiny=cfg.tiny_encoder, seed=cfg.seed)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = MultitaskModel(encoder, tasks, pooling=cfg.pooling, dropout=cfg.head_dropout)
    return model.to(cfg.device), tokenizer


def load_split(cfg: TrainConfig, task: str, split: str, tokenizer: Any) -> EvalSet:
    """Read and tokenize one task's split ("train" or "dev") as the config says.

    Training data of the ``eda_tasks`` gets EDA-augmented copies of ``eda_fraction`` of its
    rows (seeded by the run's seed and the task, so a resumed run rebuilds the same data).
    """
    spec = task_table(**task_table_args(cfg))[task]  # files and reader, task_files applied
    path = Path(spec.file(split))
    if not path.is_absolute():
        path = resolve_data_dir(cfg.data_dir) / path
    if not path.is_file():
        raise FileNotFoundError(f"task {task!r}: {split} file {path} does not exist")
    limit = cfg.train_limit if split == "train" else cfg.dev_limit
    examples = read_task_file(path, spec.reader, task=task, strict=cfg.strict_data, limit=limit)
    if split == "train" and task in cfg.eda_tasks and cfg.eda_fraction > 0:
        from gradlab.augment import augment_examples

        rng = np.random.default_rng([cfg.seed, zlib.crc32(task.encode())])
        examples = augment_examples(examples, rng, cfg.eda_fraction, **cfg.eda_args)
    return EvalSet(task, tokenize_texts(examples, tokenizer, cache_dir=cfg.tokenization_cache),
                   examples.ids)


def _optimizer(model: MultitaskModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with one parameter group per part: the shared encoder (``encoder_lr``,
    ``encoder_weight_decay``; default ``lr``, ``weight_decay``) and each task head (``lr``,
    ``weight_decay``). Per-parameter AdamW makes each head's group an optimizer of its own
    (the per-task optimizers of the papers' recipes) while one object steps, checkpoints and
    schedules them all. No weight decay on biases and LayerNorm weights (the BERT recipe).
    """
    encoder_lr = cfg.lr if cfg.encoder_lr is None else cfg.encoder_lr
    encoder_wd = cfg.weight_decay if cfg.encoder_weight_decay is None else \
        cfg.encoder_weight_decay
    parts = [("encoder", [p for _, p in model.shared_parameters()], encoder_lr, encoder_wd)]
    parts += [(f"head.{t}", list(model.heads[t].parameters()), cfg.lr, cfg.weight_decay)
              for t in model.tasks]
    groups = []
    for name, params, lr, wd in parts:
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups += [{"params": decay, "weight_decay": wd, "lr": lr, "name": name},
                   {"params": no_decay, "weight_decay": 0.0, "lr": lr, "name": name}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def probe_indices(num_examples: int, batch_size: int, seed: int, task: str) -> np.ndarray:
    """The fixed probe batch of a task: the same for every run with the same seed."""
    digest = sum(ord(c) * 131 ** i for i, c in enumerate(task)) % (2**31)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + digest)
    return torch.randperm(num_examples, generator=generator)[:batch_size].numpy()


# --- the trainer --------------------------------------------------------------------------

# Config keys a resumed run may change: none of them alters the trained parameters.
RESUMABLE_CHANGES = ("name", "runs_dir", "data_dir", "progress", "threads", "device",
                     "eval_batch_size", "nonfinite", "checkpoint_every", "keep_checkpoints",
                     "save_checkpoints", "tokenization_cache")


class Trainer:
    """Holds the parts of one run; ``run()`` is the loop.

    _after_step: private test hook, called as ``_after_step(step, model)`` after every
    training step (skipped or not); tests use it to simulate crashes and inject faults.
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False,
                 _after_step: Callable[[int, MultitaskModel], None] | None = None) -> None:
        self.cfg = cfg
        self.resume = resume
        self._after_step = _after_step
        self.run_dir = resolve_run_dir(Path(cfg.runs_dir), cfg.name)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        # torchrun sets RANK/WORLD_SIZE: every rank trains, only rank 0 writes
        self.dist = init_from_env()
        if self.dist.is_main:
            check_run_folder(self.run_dir, resume)  # before any data or model is loaded

    def _seed(self) -> None:
        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)

    def run(self) -> RunHandle:
        """Train (or continue) the run; one process at a time per run folder."""
        threads = torch.get_num_threads()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        try:
            with RunLock(self.run_dir) if self.dist.is_main else nullcontext():
                return self._run()
        finally:
            torch.set_num_threads(threads)

    def _loss(self, model: MultitaskModel, task: str, batch: dict, *, smart: bool = True
              ) -> tuple[torch.Tensor, float]:
        """(loss to backpropagate, the task loss alone) of one batch; forward under autocast
        when precision is bf16; plus the SMART term when the task has a smart_weight."""
        cfg = self.cfg
        autocast = torch.autocast(device_type=torch.device(cfg.device).type,
                                  dtype=torch.bfloat16) if cfg.precision == "bf16" \
            else nullcontext()
        with autocast:
            predictions = model(task, batch)
        loss = task_loss(model.task_specs[task], predictions.float(), batch["labels"])
        value = loss.item()
        weight = cfg.smart_weight.get(task, 0.0) if smart else 0.0
        if weight and math.isfinite(value):
            with autocast:
                loss = loss + weight * smart_loss(model, task, batch, predictions=predictions,
                                                  **cfg.smart_args)
        return loss, value

    def _run(self) -> RunHandle:  # noqa: C901 - the loop is meant to read top to bottom
        cfg = self.cfg
        self._seed()
        t_start = time.perf_counter()

        # ---- resume point: checked before the data and the model are loaded -------------
        found = self._find_resume_point() if self.resume else None

        # ---- method, schedule (their arguments are checked before the data is read) -------
        tasks = list(cfg.tasks)
        method = get_method(cfg.method, **_method_kwargs(cfg))
        counterfactuals = {m: get_method(m, **({"seed": cfg.seed} if m == "pcgrad" else {}))
                           for m in cfg.counterfactual_methods}
        total = cfg.optimizer_steps  # steps x tasks for a per-task budget
        schedule = get_schedule(cfg.schedule, len(tasks), total)

        # ---- data ------------------------------------------------------------------------
        model, tokenizer = build_model(cfg)
        special = special_token_ids(tokenizer)
        train_sets = {t: load_split(cfg, t, "train", tokenizer) for t in tasks}
        dev_sets = {t: load_split(cfg, t, "dev", tokenizer) for t in tasks}
        for t, data in train_sets.items():
            truncated = data.tokenized.count_truncated(cfg.max_length, model.layout(t))
            if truncated:
                warnings.warn(f"task {t!r}: {truncated} of {len(data.tokenized)} training "
                              f"examples are longer than max_length={cfg.max_length} tokens "
                              "and are truncated", stacklevel=3)
        batchers = {t: TaskBatcher(len(train_sets[t].tokenized), cfg.batch_size, seed=cfg.seed,
                                   task=t, drop_last=cfg.drop_last) for t in tasks}

        def batch_of(task: str, tokenized: TokenizedTask, index: np.ndarray) -> dict:
            index = shard(index, self.dist)  # this rank's share of the global batch
            batch = collate(tokenized, index, layout=model.layout(task),
                            max_length=cfg.max_length, **special)
            return {k: v.to(cfg.device) for k, v in batch.items()}

        probe_batches = {
            t: batch_of(t, train_sets[t].tokenized,
                        probe_indices(len(train_sets[t].tokenized), cfg.probe_batch_size,
                                      cfg.seed, t))
            for t in tasks
        }

        # ---- model, engine, optimizer ------------------------------------------------------
        shared = model.shared_parameters()
        engine = GradientEngine([p for _, p in shared], [block_name(n) for n, _ in shared],
                                num_tasks=len(tasks))
        optimizer = _optimizer(model, cfg)
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(cfg.warmup_ratio * total), total)
        head_params = [p for _, p in model.head_parameters()]

        # ---- restore, run store ------------------------------------------------------------
        stateful = {"method": method,
                    **{f"counterfactual.{m}": cf for m, cf in counterfactuals.items()}}
        start_step, best_score, skipped, metrics, saved_at_start, wall_before = \
            0, -math.inf, 0, {}, [], 0.0
        if found is not None:  # last, as it sets the RNG states
            path, (model_state, tensors, state) = found
            start_step = ckpt.restore_training_state(
                path, model_state, tensors, state, model=model, optimizer=optimizer,
                scheduler=scheduler, methods=stateful, batchers=batchers, max_step=total)
            best_score = -math.inf if state.get("best_score") is None else state["best_score"]
            skipped, metrics = state.get("skipped_steps", 0), state.get("metrics") or {}
            saved_at_start, wall_before = state.get("saves", ["last"]), state.get("wall_time", 0)
        if self.dist.is_main and not (self.run_dir / "config.yaml").is_file():
            write_atomic(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg),
                                                                       sort_keys=False))
        writer = NullWriter(cfg.method) if not self.dist.is_main else RunWriter(
            self.run_dir, name=cfg.name, config=to_dict(cfg), tasks=tasks,
            blocks=[(b.name, b.numel) for b in engine.blocks], method=cfg.method,
            seed=cfg.seed, schedule=cfg.schedule,
            resume=(self.run_dir / STORE_FILENAME).exists())
        monitor = Monitor(writer, tasks, engine.block_names)

        def save(kinds: list[str], step: int, rng: tuple, saved_now: list[str]) -> None:
            # Every row before this checkpoint is committed first, so a run resumed from it
            # never has a gap in its store.
            if not self.dist.is_main:
                return
            writer.flush()
            bad = _nonfinite_parameter(model)
            if bad is not None:
                raise NonFiniteError(f"step {step}: parameter {bad!r} is not finite; not "
                                     "saving it" + _last_good(self.checkpoint_dir))
            saved_now.extend(kinds)
            tensors, state = ckpt.training_state(
                optimizer=optimizer, scheduler=scheduler, methods=stateful, batchers=batchers,
                rng=rng, step=step, config=to_dict(cfg), tasks=tasks,
                best_score=best_score if math.isfinite(best_score) else None,
                skipped_steps=skipped, metrics=metrics,
                saves=list(saved_now),  # the checkpoints of this step: store rows on resume
                wall_time=wall_before + time.perf_counter() - t_start)
            first = ckpt.save_checkpoint(self.checkpoint_dir / kinds[0],
                                         model_state=model.state_dict(), tensors=tensors,
                                         state=state)
            for kind in kinds[1:]:
                ckpt.link_checkpoint(first, self.checkpoint_dir / kind)
            for kind in kinds:
                writer.log_checkpoint(step, kind, str(self.checkpoint_dir / kind))

        def run_eval(step: int) -> dict:
            if not self.dist.is_main:
                return {}
            metrics = evaluate(model, dev_sets, special_ids=special, max_length=cfg.max_length,
                               batch_size=cfg.eval_batch_size, progress=cfg.progress)
            for task, values in metrics.items():
                writer.log_eval(step, "dev", task, values)
            writer.flush()
            return metrics

        # ---- the loop ----------------------------------------------------------------------
        # Everything logged at step s describes the model after s updates: step s's training
        # Gramian, its probe, and (for s > 0) the evaluation and checkpoint at the top of the
        # iteration. A resumed run restarts at the top of its checkpoint's step and redoes it,
        # except the checkpoints, which exist already.
        model.train()
        bar = tqdm(total=total, initial=start_step, disable=not cfg.progress,
                   desc=f"{cfg.name} [{cfg.method}/{cfg.schedule}]")
        try:
            if self.resume:
                # Rows after the checkpoint are redone; the checkpoint's own rows are logged
                # again, since a kill may have come before they were committed.
                writer.truncate_after(start_step - 1)
                for kind in saved_at_start:
                    writer.log_checkpoint(start_step, kind, str(self.checkpoint_dir / kind))
            for step in range(start_step, total + 1):
                final = step == total
                saving = cfg.save_checkpoints and step > start_step
                saved_now: list[str] = []
                # RNG states as they are before the evaluation: a resumed run redoes it
                rng = ckpt.rng_state() if saving else None
                if step > 0 and (final or (cfg.eval_every and step % cfg.eval_every == 0)):
                    metrics = run_eval(step)
                    if saving and _score(metrics) > best_score:
                        best_score = _score(metrics)
                        save(["best"], step, rng, saved_now)
                periodic = bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0
                if saving and (final or periodic):
                    keep = periodic and cfg.keep_checkpoints > 0
                    save([f"step-{step}"] * keep + ["last"], step, rng, saved_now)
                    if keep:
                        ckpt.rotate_checkpoints(self.checkpoint_dir, cfg.keep_checkpoints, step)
                if cfg.probe_every and (final or step % cfg.probe_every == 0):
                    self._probe(step, model, engine, tasks, probe_batches, counterfactuals,
                                monitor, scheduler.get_last_lr()[0], head_params)
                if final:
                    break

                t0 = time.perf_counter()
                active = schedule.active_tasks(step)
                optimizer.zero_grad(set_to_none=True)  # heads; the engine rebinds shared grads
                losses = torch.full((len(active),), math.nan, dtype=torch.float64)
                fault = None
                for row, ti in enumerate(active):
                    task = tasks[ti]
                    batch = batch_of(task, train_sets[task].tokenized, next(batchers[task]))
                    engine.bind_row(row)
                    loss, losses[row] = self._loss(model, task, batch)
                    if not math.isfinite(losses[row]):
                        fault = f"non-finite loss {losses[row].item()} of task {task!r}"
                        if not self.dist.enabled:
                            break
                        continue  # every rank must reach the same collectives
                    loss.backward()
                if self.dist.enabled:  # global gradients: the mean over the ranks' shares
                    fault = _any_fault(fault, self.dist)
                    if fault is None:
                        average_gradients(engine.jacobian[:len(active)], head_params, self.dist)
                        losses = torch.tensor([average_scalar(v, self.dist)
                                               for v in losses.tolist()], dtype=torch.float64)
                block_gramians = weights = output = None
                if fault is None:
                    block_gramians = engine.block_gramians(len(active))  # [B, Ta, Ta]
                    fault = _nonfinite_block(block_gramians, engine.block_names,
                                             [tasks[i] for i in active])
                if fault is None:
                    if len(active) == 1 and not method.blockwise:
                        weights = torch.ones(1, dtype=torch.float64)
                        engine.use_row_as_update(0)
                    else:
                        output = method(_method_input(block_gramians.sum(0), block_gramians,
                                                      engine, losses, step))
                        weights = output.weights
                        if not bool(torch.isfinite(weights).all()):
                            fault = (f"method {cfg.method!r} returned non-finite task weights "
                                     f"{weights.tolist()}")
                        else:
                            engine.write_update(weights, len(active))
                if fault is None:
                    clip = _clip(model, cfg.max_grad_norm)
                    if not math.isfinite(clip):
                        fault = "non-finite gradient in the task heads"
                if fault is not None:
                    message = f"step {step}: {fault}"
                    if cfg.nonfinite == "error":
                        raise NonFiniteError(message + _last_good(self.checkpoint_dir))
                    skipped += 1
                    warnings.warn(message + " -- step skipped", RuntimeWarning, stacklevel=3)
                    writer.log_scalars(step, {"skipped": 1.0})
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                else:
                    lr = scheduler.get_last_lr()[0]
                    optimizer.step()
                    scheduler.step()
                    monitor.train_step(step, [tasks[i] for i in active], losses, weights, output,
                                       block_gramians if schedule.is_joint and
                                       cfg.log_train_gramians else None,
                                       lr=lr, grad_norm=clip,
                                       step_time=time.perf_counter() - t0)
                    bar.set_postfix({tasks[i]: f"{losses[r]:.3f}" for r, i in enumerate(active)})
                bar.update(1)
                if self._after_step is not None:
                    self._after_step(step, model)
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
        if self.dist.is_main:
            write_atomic(self.run_dir / "metrics.json",
                         json.dumps({"metrics": metrics, "wall_time": wall}, indent=1))
        return RunHandle(self.run_dir, cfg, metrics, wall, skipped)

    # ---- resume ------------------------------------------------------------------------

    def _find_resume_point(self) -> tuple[Path, tuple[dict, dict, dict]] | None:
        """The checkpoint to continue from (None: none saved, start again at step 0)."""
        for action in ckpt.recover_checkpoints(self.checkpoint_dir):
            warnings.warn(action, RuntimeWarning, stacklevel=4)
        found = ckpt.latest_checkpoint(self.checkpoint_dir)
        if found is None:
            config_file = self.run_dir / "config.yaml"
            if config_file.is_file():
                _check_compatible(to_dict(load_config(config_file)), self.cfg, config_file)
            warnings.warn(f"{self.run_dir} has no checkpoint: its run starts again at step 0",
                          RuntimeWarning, stacklevel=4)
            return None
        path, (_, _, state) = found
        saved = state.get("config")
        if not isinstance(saved, dict):
            raise ckpt.CheckpointError(f"checkpoint {path}: state.json holds no config")
        _check_compatible(saved, self.cfg, path)
        return found

    # ---- probes ------------------------------------------------------------------------

    def _probe(self, step, model, engine, tasks, probe_batches, counterfactuals, monitor, lr,
               head_params) -> None:
        """All task gradients on the fixed probe batches, dropout off, parameters unchanged."""
        was_training = model.training
        model.eval()
        try:
            losses = torch.zeros(len(tasks), dtype=torch.float64)
            fault = None
            for row, task in enumerate(tasks):
                engine.bind_row(row)
                loss, losses[row] = self._loss(model, task, probe_batches[task], smart=False)
                if not math.isfinite(losses[row]):
                    fault = f"non-finite probe loss {losses[row].item()} of task {task!r}"
                    if not self.dist.enabled:
                        break
                    continue
                loss.backward()
            if self.dist.enabled:
                fault = _any_fault(fault, self.dist)
                if fault is None:
                    average_gradients(engine.jacobian[:len(tasks)], [], self.dist)
                    losses = torch.tensor([average_scalar(v, self.dist)
                                           for v in losses.tolist()], dtype=torch.float64)
            for p in head_params:
                p.grad = None
            block_gramians = None
            if fault is None:
                block_gramians = engine.block_gramians(len(tasks))
                fault = _nonfinite_block(block_gramians, engine.block_names, tasks)
            if fault is not None:
                message = f"step {step}: probe: {fault}"
                if self.cfg.nonfinite == "error":
                    raise NonFiniteError(message + _last_good(self.checkpoint_dir))
                warnings.warn(message + " -- probe skipped", RuntimeWarning, stacklevel=4)
                monitor.writer.log_scalars(step, {"skipped_probe": 1.0})
                return
            gramian = block_gramians.sum(0)
            results = {}
            for name, method in counterfactuals.items():
                out = method(_method_input(gramian, block_gramians, engine, losses, step))
                w = out.weights.to(gramian.dtype)
                # first-order change of each loss: -lr G w (blockwise: -lr sum_b G_b w_b)
                predicted = -lr * (gramian @ w if w.dim() == 1 else
                                   torch.einsum("bij,bj->i", block_gramians, w))
                if w.dim() == 2:  # log the block-averaged weights of a blockwise method
                    w = w.mean(0)
                measured = None
                if self.cfg.measure_counterfactual:
                    measured = self._virtual_step(model, engine, tasks, probe_batches,
                                                  out.weights, lr) - losses
                results[name] = (w, predicted, measured)
            monitor.probe(step, block_gramians, losses, results)
        finally:
            model.train(was_training)

    @torch.no_grad()
    def _virtual_step(self, model, engine, tasks, probe_batches, weights, lr) -> torch.Tensor:
        """Probe losses after one SGD step of size lr along wᵀJ; parameters restored exactly."""
        saved = engine.flat_params()
        engine.write_update(weights, len(tasks))
        for p in engine.params:
            p.sub_(lr * p.grad)
        losses = torch.tensor([average_scalar(self._loss(model, t, probe_batches[t],
                                                         smart=False)[1], self.dist)
                               for t in tasks], dtype=torch.float64)
        engine.load_flat_params(saved)
        return losses


# --- small helpers ------------------------------------------------------------------------


def _method_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    kwargs = dict(cfg.method_args)
    if cfg.method in ("pcgrad", "pcgrad_layerwise", "gradvac", "random"):
        kwargs.setdefault("seed", cfg.seed)
    return kwargs


def _method_input(gramian, block_gramians, engine, losses, step):
    from gradlab.methods import MethodInput

    return MethodInput(gramian=gramian, block_gramians=block_gramians,
                       block_names=engine.block_names, losses=losses, step=step)


def _any_fault(fault: str | None, info) -> str | None:
    """The fault of this rank, or of another one: every rank must skip or stop together."""
    if average_scalar(0.0 if fault is None else 1.0, info) == 0.0:
        return None
    return fault or "a non-finite loss or gradient on another rank"


def _nonfinite_block(block_gramians: torch.Tensor, names, tasks) -> str | None:
    diag = torch.diagonal(block_gramians, dim1=-2, dim2=-1)  # [B, Ta]
    if bool(torch.isfinite(diag).all()):
        return None
    b, t = (~torch.isfinite(diag)).nonzero()[0].tolist()
    return f"non-finite gradient of task {tasks[t]!r} in block {names[b]!r}"


def _nonfinite_parameter(model: torch.nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return name
    return None


def _clip(model: torch.nn.Module, max_norm: float | None) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is None:
        norms = torch.stack([p.grad.norm() for p in params])
        return float(norms.norm())
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def _score(metrics: dict) -> float:
    overall = metrics.get("overall", {})
    value = overall.get("score", overall.get("mean", -math.inf))
    return value if value is not None and math.isfinite(value) else -math.inf


def _last_good(checkpoint_dir: Path) -> str:
    last = checkpoint_dir / "last"
    try:
        step = ckpt.read_state(last)["step"]
    except (ckpt.CheckpointError, KeyError):
        return "; no checkpoint was saved"
    return f"; the last good checkpoint is kept: {last} (step {step})"


def _check_compatible(saved: dict, cfg: TrainConfig, source: Path) -> None:
    """CheckpointError listing every config key (but RESUMABLE_CHANGES) that differs.

    A key the saved config lacks (added to gradlab later) counts as its default.
    """
    current, defaults = to_dict(cfg), to_dict(TrainConfig())
    saved = upgrade_keys(saved, str(source), warn=False)  # renamed keys of earlier versions
    problems = [f"{k}: the run has {saved.get(k, defaults[k])!r}, the config {v!r}"
                for k, v in current.items()
                if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v]
    problems += [f"{k}: unknown key in the run's config" for k in saved if k not in current]
    if problems:
        raise ckpt.CheckpointError(
            f"cannot resume from {source}: it was written by a different run configuration "
            "(a different model, task set or schedule?): " + "; ".join(problems))


__all__ = ["NonFiniteError", "RunHandle", "Trainer", "build_model", "load_split", "train"]
