"""The training loop: schedule -> engine -> method -> optimizer, read top to bottom.

``train(config)`` builds the parts from the config (which never leaks into them), then runs
one flat loop. Every step: the schedule names the active tasks; for each, the engine points
``.grad`` at its row of J and one backward fills it; the method maps the Gramian to task
weights; the engine writes wᵀJ to ``.grad``; AdamW steps. The monitor logs raw facts to the
run store; probes, evaluation and checkpoints happen every N steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from gradlab import checkpoint as ckpt
from gradlab.config import TrainConfig, load_config, save_config, to_dict
from gradlab.data import (
    DEFAULT_FILES,
    DEFAULT_READERS,
    TaskBatcher,
    TokenizedTask,
    collate,
    read_task_file,
    resolve_data_dir,
    special_token_ids,
    tokenize_texts,
)
from gradlab.engine import GradientEngine
from gradlab.evaluate import EvalSet, evaluate
from gradlab.methods import get_method
from gradlab.model import MultitaskModel, block_name, load_encoder, load_tokenizer
from gradlab.monitor import Monitor
from gradlab.schedules import get_schedule
from gradlab.store import RunWriter, resolve_run_dir
from gradlab.tasks import TASKS, task_loss


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
    resume: continue the run ``<runs_dir>/<name>`` from its last checkpoint.

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
        values = {**to_dict(config), **overrides}
        return load_config(None, values)
    return load_config(config, overrides)


# --- building the parts from plain arguments ------------------------------------------------


def build_model(cfg: TrainConfig) -> tuple[MultitaskModel, Any]:
    """The model and tokenizer a config describes (encoder weights: pretrained or seeded)."""
    tokenizer = load_tokenizer(cfg.encoder)
    encoder = load_encoder(cfg.encoder, tiny=cfg.tiny_encoder, seed=cfg.seed)
    pair_heads = {"para": cfg.para_head or cfg.pair_head, "sts": cfg.sts_head or cfg.pair_head}
    if pair_heads["para"] == "cosine":
        pair_heads["para"] = "bi"
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = MultitaskModel(encoder, cfg.tasks, pooling=cfg.pooling, sst_head=cfg.sst_head,
                               pair_heads={t: pair_heads[t] for t in cfg.tasks if t in pair_heads},
                               dropout=cfg.head_dropout)
    return model.to(cfg.device), tokenizer


def load_split(cfg: TrainConfig, task: str, split: str, tokenizer: Any) -> EvalSet:
    """Read and tokenize one task's split ("train" or "dev") as the config says."""
    overrides = dict(cfg.task_files.get(task, {}))
    file_key = split
    filename = overrides.pop(file_key, DEFAULT_FILES[task][0 if split == "train" else 1])
    overrides.pop("train", None)
    overrides.pop("dev", None)
    spec = dataclasses.replace(DEFAULT_READERS[task], **overrides) if overrides else \
        DEFAULT_READERS[task]
    path = Path(filename)
    if not path.is_absolute():
        path = resolve_data_dir(cfg.data_dir) / path
    if not path.is_file():
        raise FileNotFoundError(f"task {task!r}: {split} file {path} does not exist")
    limit = cfg.train_limit if split == "train" else cfg.dev_limit
    examples = read_task_file(path, spec, task=task, strict=cfg.strict_data, limit=limit)
    return EvalSet(task, tokenize_texts(examples, tokenizer), examples.ids)


def _optimizer(model: MultitaskModel, cfg: TrainConfig) -> torch.optim.AdamW:
    # No weight decay on biases and LayerNorm weights (the BERT recipe).
    decay, no_decay = [], []
    for _name, p in [*model.shared_parameters(), *model.head_parameters()]:
        (no_decay if p.ndim < 2 else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def probe_indices(num_examples: int, batch_size: int, seed: int, task: str) -> np.ndarray:
    """The fixed probe batch of a task: the same for every run with the same seed."""
    digest = sum(ord(c) * 131 ** i for i, c in enumerate(task)) % (2**31)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + digest)
    return torch.randperm(num_examples, generator=generator)[:batch_size].numpy()


# --- the trainer --------------------------------------------------------------------------


class Trainer:
    """Holds the parts of one run; ``run()`` is the loop."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.resume = resume
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.run_dir = resolve_run_dir(Path(cfg.runs_dir), cfg.name)

    def _seed(self) -> None:
        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)

    def run(self) -> RunHandle:  # noqa: C901 - the loop is meant to read top to bottom
        cfg = self.cfg
        self._seed()
        t_start = time.perf_counter()

        # ---- data ------------------------------------------------------------------------
        model, tokenizer = build_model(cfg)
        special = special_token_ids(tokenizer)
        tasks = list(cfg.tasks)
        train_sets = {t: load_split(cfg, t, "train", tokenizer) for t in tasks}
        dev_sets = {t: load_split(cfg, t, "dev", tokenizer) for t in tasks}
        for t, data in train_sets.items():
            truncated = data.tokenized.count_truncated(cfg.max_length, model.layout(t))
            if truncated:
                warnings.warn(f"task {t!r}: {truncated} of {len(data.tokenized)} training "
                              f"examples are longer than max_length={cfg.max_length} tokens "
                              "and are truncated", stacklevel=2)
        batchers = {t: TaskBatcher(len(train_sets[t].tokenized), cfg.batch_size, seed=cfg.seed,
                                   task=t) for t in tasks}

        def batch_of(task: str, tokenized: TokenizedTask, index: np.ndarray) -> dict:
            batch = collate(tokenized, index, layout=model.layout(task),
                            max_length=cfg.max_length, **special)
            return {k: v.to(cfg.device) for k, v in batch.items()}

        probe_batches = {
            t: batch_of(t, train_sets[t].tokenized,
                        probe_indices(len(train_sets[t].tokenized), cfg.probe_batch_size,
                                      cfg.seed, t))
            for t in tasks
        }

        # ---- model, engine, method, optimizer ----------------------------------------------
        shared = model.shared_parameters()
        engine = GradientEngine([p for _, p in shared], [block_name(n) for n, _ in shared],
                                num_tasks=len(tasks))
        method = get_method(cfg.method, **_method_kwargs(cfg))
        counterfactuals = {m: get_method(m, **({"seed": cfg.seed} if m == "pcgrad" else {}))
                           for m in cfg.counterfactual_methods}
        schedule = get_schedule(cfg.schedule, len(tasks), cfg.steps)
        optimizer = _optimizer(model, cfg)
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(cfg.warmup_ratio * cfg.steps), cfg.steps)
        head_params = [p for _, p in model.head_parameters()]

        # ---- run store, resume -----------------------------------------------------------
        start_step, best_score, skipped = 0, -math.inf, 0
        if self.resume:
            last = self.run_dir / "checkpoints" / "last"
            model_state, tensors, state = ckpt.load_checkpoint(last)
            _check_compatible(state, cfg, last)
            model.load_state_dict(model_state)
            ckpt.optimizer_from_flat(optimizer, "optim", tensors, state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            method.load_state_dict(_method_state(tensors, state, "method"))
            for t in tasks:
                batchers[t].load_state_dict(state["batchers"][t])
            ckpt.set_rng_state(tensors, state["rng"])
            start_step, best_score = state["step"], state.get("best_score", -math.inf)
            skipped = state.get("skipped_steps", 0)
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        writer = RunWriter(self.run_dir, name=cfg.name, config=to_dict(cfg), tasks=tasks,
                           blocks=[(b.name, b.numel) for b in engine.blocks], method=cfg.method,
                           seed=cfg.seed, schedule=cfg.schedule, resume=self.resume)
        if self.resume:
            writer.truncate_after(start_step - 1)
        monitor = Monitor(writer, tasks, engine.block_names)

        def save(kind: str, step: int, metrics: dict | None = None) -> Path:
            tensors, state = self._train_state(model, optimizer, scheduler, method, batchers,
                                               step, best_score, skipped, metrics)
            path = ckpt.save_checkpoint(self.run_dir / "checkpoints" / kind,
                                        model_state=model.state_dict(), tensors=tensors,
                                        state=state)
            writer.log_checkpoint(step, kind, str(path))
            return path

        def run_eval(step: int) -> dict:
            metrics = evaluate(model, dev_sets, special_ids=special, max_length=cfg.max_length,
                               batch_size=cfg.eval_batch_size, progress=cfg.progress)
            for task, values in metrics.items():
                writer.log_eval(step, "dev", task, values)
            writer.flush()
            return metrics

        # ---- the loop ----------------------------------------------------------------------
        # Everything logged at step s describes the model after s updates: step s's training
        # Gramian, its probe, and (for s > 0) the evaluation and checkpoint at the top of the
        # iteration. A resumed run restarts at the top of its checkpoint's step and redoes it.
        model.train()
        metrics: dict = {}
        bar = tqdm(total=cfg.steps, initial=start_step, disable=not cfg.progress,
                   desc=f"{cfg.name} [{cfg.method}/{cfg.schedule}]")
        try:
            for step in range(start_step, cfg.steps + 1):
                final = step == cfg.steps
                if step > 0 and (final or (cfg.eval_every and step % cfg.eval_every == 0)):
                    metrics = run_eval(step)
                    if cfg.save_checkpoints and _score(metrics) > best_score:
                        best_score = _score(metrics)
                        save("best", step, metrics)
                if cfg.save_checkpoints and (final or (
                        cfg.checkpoint_every and step > start_step
                        and step % cfg.checkpoint_every == 0)):
                    save("last", step, metrics)
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
                    loss = task_loss(TASKS[task], model(task, batch), batch["labels"],
                                     cfg.sts_loss)
                    losses[row] = loss.item()
                    if not math.isfinite(losses[row]):
                        fault = f"non-finite loss {losses[row].item()} for task {task!r}"
                        break
                    loss.backward()
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
                        engine.write_update(weights, len(active))
                    clip = _clip(model, cfg.max_grad_norm)
                    if not math.isfinite(clip):
                        fault = "non-finite gradient in the task heads"
                if fault is not None:
                    message = f"step {step}: {fault}"
                    if cfg.nonfinite == "error":
                        raise NonFiniteError(message + _last_good(self.run_dir))
                    skipped += 1
                    warnings.warn(message + " -- step skipped", RuntimeWarning, stacklevel=2)
                    writer.log_scalars(step, {"skipped": 1.0})
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    bar.update(1)
                    continue
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()

                monitor.train_step(step, [tasks[i] for i in active], losses, weights, output,
                                   block_gramians if schedule.is_joint and
                                   cfg.log_train_gramians else None,
                                   lr=lr, grad_norm=clip,
                                   step_time=time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix({tasks[i]: f"{losses[r]:.3f}" for r, i in enumerate(active)})
        except BaseException:
            writer.close(status="failed")
            raise
        finally:
            bar.close()
        wall = time.perf_counter() - t_start
        writer.log_scalars(cfg.steps, {"wall_time": wall})
        writer.close(status="finished")
        (self.run_dir / "metrics.json").write_text(json.dumps(
            {"metrics": metrics, "wall_time": wall}, indent=1), encoding="utf-8")
        return RunHandle(self.run_dir, cfg, metrics, wall, skipped)

    # ---- probes ------------------------------------------------------------------------

    def _probe(self, step, model, engine, tasks, probe_batches, counterfactuals, monitor, lr,
               head_params) -> None:
        """All task gradients on the fixed probe batches, dropout off, parameters unchanged."""
        was_training = model.training
        model.eval()
        losses = torch.zeros(len(tasks), dtype=torch.float64)
        for row, task in enumerate(tasks):
            engine.bind_row(row)
            batch = probe_batches[task]
            loss = task_loss(TASKS[task], model(task, batch), batch["labels"], self.cfg.sts_loss)
            loss.backward()
            losses[row] = loss.item()
        for p in head_params:
            p.grad = None
        block_gramians = engine.block_gramians(len(tasks))
        gramian = block_gramians.sum(0)
        results = {}
        for name, method in counterfactuals.items():
            out = method(_method_input(gramian, block_gramians, engine, losses, step))
            w = out.weights if out.weights.dim() == 1 else out.weights.sum(0) / len(engine.blocks)
            predicted = -lr * (gramian @ w.to(gramian.dtype))
            measured = None
            if self.cfg.measure_counterfactual:
                measured = self._virtual_step(model, engine, tasks, probe_batches, out.weights,
                                              lr) - losses
            results[name] = (w, predicted, measured)
        monitor.probe(step, block_gramians, losses, results)
        model.train(was_training)

    @torch.no_grad()
    def _virtual_step(self, model, engine, tasks, probe_batches, weights, lr) -> torch.Tensor:
        """Probe losses after one SGD step of size lr along wᵀJ; parameters restored exactly."""
        saved = engine.flat_params()
        engine.write_update(weights, len(tasks))
        for p in engine.params:
            p.sub_(lr * p.grad)
        losses = torch.tensor([task_loss(TASKS[t], model(t, probe_batches[t]),
                                         probe_batches[t]["labels"], self.cfg.sts_loss).item()
                               for t in tasks], dtype=torch.float64)
        engine.load_flat_params(saved)
        return losses

    # ---- checkpoint state --------------------------------------------------------------

    def _train_state(self, model, optimizer, scheduler, method, batchers, step, best_score,
                     skipped, metrics) -> tuple[dict, dict]:
        tensors, optim_meta = ckpt.optimizer_to_flat(optimizer, "optim")
        rng_tensors, rng_meta = ckpt.rng_state()
        tensors.update(rng_tensors)
        method_json = {}
        for key, value in method.state_dict().items():
            if torch.is_tensor(value):
                tensors[f"method.{key}"] = value
            else:
                method_json[key] = value
        state = {
            "step": step,
            "config": to_dict(self.cfg),
            "tasks": list(self.cfg.tasks),
            "optimizer": optim_meta,
            "scheduler": scheduler.state_dict(),
            "method": method_json,
            "batchers": {t: b.state_dict() for t, b in batchers.items()},
            "rng": rng_meta,
            "best_score": best_score if math.isfinite(best_score) else None,
            "skipped_steps": skipped,
            "metrics": metrics,
        }
        return tensors, state


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


def _method_state(tensors: dict, state: dict, prefix: str) -> dict:
    out = dict(state.get(prefix, {}))
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            out[name[len(prefix) + 1:]] = value
    return out


def _nonfinite_block(block_gramians: torch.Tensor, names, tasks) -> str | None:
    diag = torch.diagonal(block_gramians, dim1=-2, dim2=-1)  # [B, Ta]
    if bool(torch.isfinite(diag).all()):
        return None
    b, t = (~torch.isfinite(diag)).nonzero()[0].tolist()
    return f"task {tasks[t]!r}, block {names[b]!r}"


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


def _last_good(run_dir: Path) -> str:
    last = run_dir / "checkpoints" / "last"
    return f"; last good checkpoint: {last}" if last.is_dir() else "; no checkpoint was saved"


def _check_compatible(state: dict, cfg: TrainConfig, path: Path) -> None:
    saved = state.get("config", {})
    problems = [f"{k}: checkpoint has {saved.get(k)!r}, config has {getattr(cfg, k)!r}"
                for k in ("tasks", "encoder", "tiny_encoder", "method", "schedule", "seed",
                          "pooling", "sst_head", "pair_head", "batch_size", "steps")
                if saved.get(k) != getattr(cfg, k)]
    if problems:
        raise ckpt.CheckpointError(f"cannot resume from {path}: " + "; ".join(problems))


__all__ = ["NonFiniteError", "RunHandle", "Trainer", "build_model", "load_split", "train"]
