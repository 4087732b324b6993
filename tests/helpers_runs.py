"""Synthetic runs for tests: a realistic ``run.sqlite`` written with RunWriter, no model needed.

``make_synthetic_run(tmp_path / "run")`` draws per-block task gradients J_b [T, P_b] whose first
task (SST) tends to conflict with the others while the others (para, sts) agree, logs their
per-block Gramians (train every step for the joint schedule, probe every ``probe_every``
steps), the method's weights and PCGrad projection events, losses and other scalars, dev
evals every 20 steps, counterfactual rows on probe steps and a checkpoint. The vectors are
saved next to the store (``synthetic_vectors.npz``) so tests can check statistics by brute
force: ``load_synthetic_vectors(run_dir)[("probe", 10, "layer.0")]`` is J [T, P].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gradlab import stats
from gradlab.methods._base import ProjectionEvent
from gradlab.store import RunWriter

__all__ = ["VECTORS_FILE", "load_synthetic_vectors", "make_synthetic_run", "pcgrad_weights"]

VECTORS_FILE = "synthetic_vectors.npz"
LR = 2e-5
_METRICS = {"sst": ("accuracy", "macro_f1"), "para": ("accuracy", "f1"),
            "sts": ("pearson", "spearman")}


def make_synthetic_run(
    run_dir: Path | str,
    *,
    method: str = "pcgrad",
    seed: int = 0,
    schedule: str = "joint",
    steps: int = 60,
    tasks: Sequence[str] = ("sst", "para", "sts"),
    blocks: Sequence[str] = ("embeddings", "layer.0", "layer.1"),
    probe_every: int = 10,
    rng_seed: int = 0,
) -> Path:
    """Write a synthetic run into ``run_dir`` (its name is the folder name) and return run_dir.

    method: "pcgrad" (whole-encoder PCGrad on the logged Gramian, with projection events),
    "pcgrad_layerwise" (PCGrad per block: weights [B, T], events carry the block), "mean"
    (1/T) or any other name (weights 1, i.e. the plain sum). schedule: "joint" (all tasks
    every step, train Gramians logged) or "round_robin" (one task per step, weight 1, no train
    Gramian). The random draws depend on (rng_seed, seed), so seeds give different runs.
    """
    if schedule not in ("joint", "round_robin"):
        raise ValueError(f"schedule must be 'joint' or 'round_robin', got {schedule!r}")
    run_dir = Path(run_dir)
    rng = np.random.default_rng([rng_seed, seed])
    tasks, blocks = list(tasks), list(blocks)
    T = len(tasks)
    numel = {b: 24 + 8 * k for k, b in enumerate(blocks)}
    config = {"method": method, "seed": seed, "schedule": schedule, "steps": steps,
              "probe_every": probe_every, "lr": LR, "tasks": tasks, "synthetic": True}
    vectors: dict[str, np.ndarray] = {}
    start_loss = np.linspace(1.6, 0.8, T)

    with RunWriter(run_dir, name=run_dir.name, config=config, tasks=tasks,
                   blocks=[(b, numel[b]) for b in blocks], method=method, seed=seed,
                   schedule=schedule) as writer:
        for step in range(steps):
            progress = step / max(steps - 1, 1)
            lr = LR * (1.0 - 0.9 * progress)
            if schedule == "joint":
                active = tasks
                J = _draw_gradients(rng, T, blocks, numel, progress)
                for b, Jb in zip(blocks, J, strict=True):
                    vectors[f"train|{step}|{b}"] = Jb
                Gb = np.stack([Jb @ Jb.T for Jb in J])
                writer.log_gramians(step, "train", Gb, blocks, tasks)
                weights, events = _method(method, Gb, blocks, rng)
                writer.log_weights(step, "train", method, weights, tasks,
                                   block_names=blocks if weights.ndim == 2 else None)
                writer.log_projections(step, events, tasks)
                if weights.ndim == 2:
                    update = np.sqrt(sum(stats.update_norm(G, w) ** 2
                                         for G, w in zip(Gb, weights, strict=True)))
                else:
                    update = stats.update_norm(Gb.sum(0), weights)
            else:
                active = [tasks[step % T]]
                writer.log_weights(step, "train", method, np.ones(1), active)
                update = abs(rng.normal(1.0, 0.1)) / (1.0 + 2.0 * progress)
            for k, task in enumerate(tasks):
                if task in active:
                    loss = start_loss[k] * np.exp(-1.5 * progress) + rng.normal(0, 0.03)
                    writer.log_scalars(step, {"loss": loss}, task=task)
            writer.log_scalars(step, {"lr": lr, "update_norm": float(update),
                                      "step_time": 0.1 + abs(rng.normal(0, 0.01)),
                                      "clip_coef": 1.0, "skipped": 0.0})
            if step % probe_every == 0:
                J = _draw_gradients(rng, T, blocks, numel, progress)
                for b, Jb in zip(blocks, J, strict=True):
                    vectors[f"probe|{step}|{b}"] = Jb
                Gb = np.stack([Jb @ Jb.T for Jb in J])
                writer.log_gramians(step, "probe", Gb, blocks, tasks)
                # a second replicate batch per task from its own generator (the draws above
                # stay as they were); rows replicate-major: [J (replicate 0); J1]
                J1 = _draw_gradients(np.random.default_rng([rng_seed, seed, step]), T, blocks,
                                     numel, progress)
                Jr = [np.concatenate([a, b]) for a, b in zip(J, J1, strict=True)]
                writer.log_replicate_gramians(step, np.stack([Jb @ Jb.T for Jb in Jr]),
                                              blocks, tasks, 2)
                G = Gb.sum(0)
                for counterfactual in ("sum", "mean", "pcgrad"):
                    w, _ = _method(counterfactual, Gb, blocks, rng)
                    predicted = stats.predicted_loss_change(G, w, lr)
                    measured = predicted * (1 + rng.normal(0, 0.2, T)) if step == 0 else None
                    writer.log_counterfactual(step, counterfactual, tasks, w, predicted, measured)
            if (step + 1) % 20 == 0:
                _log_evals(writer, rng, step, tasks, progress)
        writer.log_checkpoint(steps - 1, "last", run_dir / "checkpoints" / f"step_{steps - 1}")
    np.savez(run_dir / VECTORS_FILE, **vectors)
    return run_dir


def load_synthetic_vectors(run_dir: Path | str) -> dict[tuple[str, int, str], np.ndarray]:
    """{(source, step, block): J [T, P]} of a run written by make_synthetic_run."""
    with np.load(Path(run_dir) / VECTORS_FILE) as data:
        out = {}
        for key in data.files:
            source, step, block = key.split("|")
            out[(source, int(step), block)] = data[key]
        return out


def pcgrad_weights(G: np.ndarray, rng: np.random.Generator, block: str | None = None
                   ) -> tuple[np.ndarray, list[ProjectionEvent]]:
    """PCGrad (Yu et al. 2020, arXiv:2001.06782) on a Gramian [T, T], in coefficient space.

    For each task i, c = e_i; for j in a random order of the other tasks, if (c G)_j < 0 then
    c -= (c G)_j / G_jj e_j (projection of g_i^PC off the original g_j). Weights = Σ_i c_i.
    """
    T = G.shape[0]
    weights = np.zeros(T)
    events = []
    for i in range(T):
        c = np.eye(T)[i]
        for j in (j for j in rng.permutation(T) if j != i):
            dot = float(c @ G[:, j])
            if dot < 0 and G[j, j] > 0:
                norm_c = float(np.sqrt(max(c @ G @ c, 0.0)))
                cosine = dot / (norm_c * np.sqrt(G[j, j])) if norm_c > 0 else float("nan")
                coefficient = dot / G[j, j]
                c = c - coefficient * np.eye(T)[j]
                events.append(ProjectionEvent(i, int(j), coefficient, cosine, block))
        weights += c
    return weights, events


def _method(name: str, Gb: np.ndarray, blocks: list[str], rng: np.random.Generator
            ) -> tuple[np.ndarray, list[ProjectionEvent]]:
    T = Gb.shape[-1]
    if name == "pcgrad":
        return pcgrad_weights(Gb.sum(0), rng)
    if name == "pcgrad_layerwise":
        results = [pcgrad_weights(G, rng, block=b) for G, b in zip(Gb, blocks, strict=True)]
        return np.stack([w for w, _ in results]), [e for _, ev in results for e in ev]
    if name == "mean":
        return np.full(T, 1.0 / T), []
    return np.ones(T), []


def _draw_gradients(rng: np.random.Generator, T: int, blocks: list[str], numel: dict[str, int],
                    progress: float) -> list[np.ndarray]:
    """Per-block J_b [T, P_b]: a shared direction every task follows except the first, which
    opposes it (more so in deeper blocks), plus noise; norms differ by task and decay."""
    out = []
    scale = np.linspace(1.5, 0.7, T) if T > 1 else np.ones(1)
    for k, block in enumerate(blocks):
        P = numel[block]
        u = rng.standard_normal(P)
        u /= np.linalg.norm(u)
        noise = rng.standard_normal((T, P)) / np.sqrt(P)
        align = np.ones(T)
        if T > 1:
            align[0] = -0.2 - 0.5 * k / max(len(blocks) - 1, 1)
        J = align[:, None] * u + noise
        out.append(scale[:, None] * J * (0.5 + 0.5 * k) / (1.0 + 2.0 * progress))
    return out


def _log_evals(writer: RunWriter, rng: np.random.Generator, step: int, tasks: list[str],
               progress: float) -> None:
    primary = {}
    for task in tasks:
        base = 0.35 + 0.3 * progress + rng.normal(0, 0.02)
        names = _METRICS.get(task, ("accuracy",))
        metrics = {m: float(np.clip(base + rng.normal(0, 0.01), 0, 1)) for m in names}
        writer.log_eval(step, "dev", task, metrics)
        primary[task] = metrics[names[0]]
    overall = {"mean": float(np.mean(list(primary.values())))}
    if {"sst", "para", "sts"} <= set(primary):
        overall["score"] = (primary["sst"] + primary["para"] + (1 + primary["sts"]) / 2) / 3
    writer.log_eval(step, "dev", "overall", overall)
