"""The gradient arrow diagram: real task gradients and method updates, drawn exactly.

Papers on gradient conflict sketch two task gradients and what PCGrad makes of them. Here
the arrows are the model's logged gradients at one step: every vector v = cᵀJ (a task
gradient c = e_i, or a method's update c = w) gets exact coordinates in a plane of the task
gradients from the stored Gramian alone (`gradlab.stats.plane_coordinates`), and the share of
its length that lies outside the drawn plane is stated next to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.transforms import offset_copy

from gradlab.plot import _data, _theme

__all__ = ["gradient_arrows", "arrow_coordinates"]


def gradient_arrows(
    data,
    *,
    step: int | None = None,
    source: str = "train",
    block: str = "encoder",
    methods: Sequence[str] = ("sum", "pcgrad"),
    logged: bool = True,
    basis: str = "pair",
    pair=None,
    run: str | None = None,
    tasks: Sequence[str] | None = None,
    legend: str | bool = "below",
    ax: Axes | None = None,
) -> Axes:
    """Task gradients and method updates at ``step``, exactly, in a plane of the gradients.

    ``data``: a Run, Runs (with ``run=`` naming one when there are several) or a Gramian
    [T, T] (then ``tasks`` names its rows). ``methods``: registry names replayed on the
    stored Gramian with ``gradlab.methods.get_method``; ``logged`` adds the update the run's
    own method applied (train source only; it replaces the replay of the same method, whose
    random choices, e.g. PCGrad's task order, may differ). ``basis``: "pair" (x along g_i,
    y the part of g_j orthogonal to it; ``pair`` "a-b", default the first two tasks) or
    "pca" (the top two principal directions of the task gradients). Each legend entry
    states the share of that vector's length outside the drawn plane (``legend``: "below",
    "outside" = right, "inside" or False). Coordinates: `arrow_coordinates`.

    >>> ax = gradient_arrows(run, step=40, methods=("sum", "pcgrad", "mgda"))  # doctest: +SKIP
    """
    coords = arrow_coordinates(
        data, step=step, source=source, block=block, methods=methods, logged=logged,
        basis=basis, pair=pair, run=run, tasks=tasks,
    )  # fmt: skip
    ax = plt.gca() if ax is None else ax
    handles = []
    for row in coords.itertuples():
        is_task = row.kind == "task"
        color = _theme.task_color(row.name) if is_task else _theme.method_color(row.name)
        ann = ax.annotate(
            "",
            xy=(row.x, row.y),
            xytext=(0.0, 0.0),
            arrowprops={
                "arrowstyle": "-|>,head_length=0.5,head_width=0.22",
                "color": color,
                "lw": 1.3 if is_task else 2.0,
                "shrinkA": 0,
                "shrinkB": 0,
            },
            zorder=3 if is_task else 4,
        )
        ann.set_gid(f"gradlab-arrow:{row.kind}:{row.name}")
        if is_task:
            ax.annotate(
                row.label, xy=(row.x, row.y), xytext=_offset(row.x, row.y), ha="center",
                va="center", textcoords="offset points", color=color, fontsize="small",
                fontweight="bold",
            )  # fmt: skip
        handles.append(
            Line2D([], [], color=color, lw=1.3 if is_task else 2.0,
                   label=f"{row.label}: {_outside_text(row.outside)}")
        )  # fmt: skip
    ax.plot([0], [0], "o", color="0.2", ms=2.5, zorder=5)
    _limits(ax, coords)
    ax.axhline(0, color="0.8", lw=0.6, zorder=0)
    ax.axvline(0, color="0.8", lw=0.6, zorder=0)
    ax.grid(False)
    attrs = coords.attrs
    if attrs["basis"] == "pair":
        a, b = attrs["pair"]
        ga, gb = _grad_symbol(a), _grad_symbol(b)
        ax.set(xlabel=f"along {ga}", ylabel=f"part of {gb} ⊥ {ga}")
    else:
        ax.set(xlabel="1st principal direction", ylabel="2nd principal direction")
    if legend not in ("below", "outside", "inside", True, False, None):
        raise ValueError(f"legend must be 'below', 'outside', 'inside' or False, got {legend!r}")
    if legend:
        where = {
            # anchored a fixed distance in points under the Axes, clear of the x label
            "below": {
                "loc": "upper center",
                "bbox_to_anchor": (0.5, 0.0),
                "bbox_transform": offset_copy(ax.transAxes, ax.figure, y=-32, units="points"),
                "ncols": 2,
            },
            "outside": {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)},
            "inside": {"loc": "best"},
        }[legend if isinstance(legend, str) else "below"]
        ax.legend(
            handles=handles, title="length outside the plane", frameon=False,
            handlelength=1.5, columnspacing=1.0, **where,
        )  # fmt: skip
    where = f"{_theme.source_label(attrs['source'])}"
    if attrs["block"] != "encoder":
        where += f", {_theme.block_label(attrs['block'])}"
    prefix = f"{attrs['run']}\n" if attrs.get("run") else ""  # two lines: fits a column
    step_text = f"step {attrs['step']}, " if attrs.get("step") is not None else ""
    ax.set_title(f"{prefix}{step_text}{where}", loc="left", fontsize="small", color="0.3")
    return ax


def arrow_coordinates(
    data,
    *,
    step: int | None = None,
    source: str = "train",
    block: str = "encoder",
    methods: Sequence[str] = ("sum", "pcgrad"),
    logged: bool = True,
    basis: str = "pair",
    pair=None,
    run: str | None = None,
    tasks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The arrows of `gradient_arrows` as a frame: kind ("task" | "update"), name, label,
    weights (the coefficients c of v = cᵀJ), x, y, outside (share of ‖v‖ off the plane).

    ``attrs`` holds basis, pair (task names), step, source, block and run.
    """
    if basis not in ("pair", "pca"):
        raise ValueError(f"basis must be 'pair' or 'pca', got {basis!r}")
    tasks, G, step, run_obj = _gramian(data, step, source, block, run, tasks)
    T = len(tasks)
    names, kinds, labels, coeffs = [], [], [], []
    for k, t in enumerate(tasks):
        names.append(t)
        kinds.append("task")
        labels.append(_theme.task_label(t))
        coeffs.append(np.eye(T)[k])
    if isinstance(methods, str):
        methods = (methods,)
    applied = None
    if logged and run_obj is not None and source == "train":
        applied = _logged_weights(run_obj, step, tasks)
    own = _data.variant(run_obj.method, run_obj.schedule) if run_obj is not None else None
    for name in methods:
        if applied is not None and name == own:
            continue  # drawn once below, as what the run applied (PCGrad's order is random)
        names.append(name)
        kinds.append("update")
        labels.append(_theme.method_label(name))
        coeffs.append(_replay(name, G, step))
    if applied is not None:
        names.append(own)
        kinds.append("update")
        labels.append(f"{_theme.method_label(own)} (applied)")
        coeffs.append(applied)
    pair_names = None
    pair_idx = (0, 1)
    if basis == "pair":
        if T < 2:
            raise ValueError(f"basis='pair' needs two tasks, the Gramian has {tasks}; use 'pca'")
        a, b = _pair_tasks(pair, tasks)
        pair_idx, pair_names = (tasks.index(a), tasks.index(b)), (a, b)
    from gradlab import stats

    C = np.stack(coeffs)
    xy, outside = stats.plane_coordinates(G, C, basis=basis, pair=pair_idx)
    df = pd.DataFrame(
        {
            "kind": kinds,
            "name": names,
            "label": labels,
            "weights": [tuple(float(v) for v in c) for c in C],
            "x": xy[:, 0],
            "y": xy[:, 1],
            "outside": outside,
        }
    )
    df.attrs = {
        "basis": basis,
        "pair": pair_names,
        "step": step,
        "source": source,
        "block": block,
        "run": getattr(run_obj, "name", None),
        "tasks": list(tasks),
    }
    return df


def _gramian(data, step, source, block, run, tasks):
    """(tasks, G [T, T], step, Run or None) from a Run, Runs or a Gramian array."""
    if isinstance(data, np.ndarray) or (
        isinstance(data, tuple) and len(data) == 2 and not hasattr(data, "runs")
    ):
        if isinstance(data, tuple):
            tasks, G = data
        G = np.asarray(G if isinstance(data, tuple) else data, dtype=float)
        if G.ndim != 2 or G.shape[0] != G.shape[1]:
            raise ValueError(f"a Gramian must have shape [T, T], got {G.shape}")
        tasks = list(tasks) if tasks is not None else [f"task{k}" for k in range(G.shape[0])]
        if len(tasks) != G.shape[0]:
            raise ValueError(f"tasks {tasks} do not match the Gramian's shape {G.shape}")
        return tasks, G, step, None
    runs = getattr(data, "runs", None)
    if isinstance(runs, list):
        names = [r.name for r in runs]
        if run is None:
            if len(runs) > 1:
                raise ValueError(f"the arrow diagram shows one run; pass run= one of {names}")
            data = runs[0]
        elif run not in names:
            raise ValueError(f"run {run!r} not among the runs {names}")
        else:
            data = runs[names.index(run)]
    elif run is not None and getattr(data, "name", run) != run:
        raise ValueError(f"run {run!r} asked for, but data is run {data.name!r}")
    if not callable(getattr(data, "gramian", None)):
        raise TypeError(
            f"data must be a Run, Runs or a Gramian array [T, T], got {type(data).__name__}"
        )
    if source not in ("train", "probe"):
        raise ValueError(f"source must be 'train' or 'probe', got {source!r}")
    if step is None:
        steps, _, _ = data.gramian_series(source, block)
        if len(steps) == 0:
            raise ValueError(f"run {data.name!r} has no {source!r} Gramians of block {block!r}")
        step = int(steps[-1])
    tasks, G = data.gramian(int(step), source=source, block=block)
    return list(tasks), np.asarray(G, dtype=float), int(step), data


def _replay(name: str, G: np.ndarray, step) -> np.ndarray:
    """Weights [T] of method ``name`` on the Gramian, via the method registry."""
    import torch

    from gradlab.methods import METHODS, MethodInput, get_method

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; methods: {sorted(METHODS)}")
    method = get_method(name)
    if getattr(method, "blockwise", False):
        raise ValueError(
            f"method {name!r} weights each block separately; its update is not a "
            f"combination of the whole-encoder task gradients, so it has no arrow here"
        )
    gramian = torch.tensor(G, dtype=torch.float64)
    out = method(MethodInput(gramian=gramian, step=int(step or 0)))
    w = np.asarray(out.weights.detach().cpu().numpy(), dtype=float)
    if w.shape != (G.shape[0],):
        raise ValueError(f"method {name!r} returned weights of shape {w.shape}, expected [T]")
    return w


def _logged_weights(run, step: int, tasks: list[str]) -> np.ndarray | None:
    """The run's applied whole-update weights at ``step`` in ``tasks`` order (None if the
    run logged blockwise weights or none at this step)."""
    w = run.weights(source="train")
    w = w[(w["step"] == step) & (w["block"] == "")]
    if w.empty:
        return None
    by_task = dict(zip(w["task"], w["value"], strict=True))
    return np.array([by_task.get(t, 0.0) for t in tasks], dtype=float)


def _pair_tasks(pair, tasks: list[str]) -> tuple[str, str]:
    if pair is None:
        return tasks[0], tasks[1]
    if isinstance(pair, tuple) and len(pair) == 2:
        a, b = pair
    elif isinstance(pair, str) and "-" in pair:
        a, b = pair.split("-", 1)
    else:
        raise ValueError(f"pair must be 'a-b' or (a, b), got {pair!r}")
    missing = [t for t in (a, b) if t not in tasks]
    if missing or a == b:
        raise ValueError(f"pair {pair!r}: the Gramian's tasks are {tasks}")
    return a, b


def _grad_symbol(task: str) -> str:
    """g with the task's readable name as subscript (mathtext), e.g. g_SST."""
    return f"$g_{{\\mathrm{{{_theme.task_label(task)}}}}}$"


def _outside_text(share: float) -> str:
    if not np.isfinite(share):
        return "zero vector"
    return f"{100 * share:.0f}%"


def _offset(x: float, y: float, distance: float = 9.0) -> tuple[float, float]:
    """Label offset in points, beyond the arrow tip along its direction."""
    n = float(np.hypot(x, y))
    if n == 0 or not np.isfinite(n):
        return (0.0, distance)
    return (distance * x / n, distance * y / n)


def _limits(ax: Axes, coords: pd.DataFrame) -> None:
    """Square limits around the origin and every tip, so the aspect is equal and labels fit."""
    xs = np.r_[0.0, coords["x"].to_numpy(dtype=float)]
    ys = np.r_[0.0, coords["y"].to_numpy(dtype=float)]
    xs, ys = xs[np.isfinite(xs)], ys[np.isfinite(ys)]
    span = max(np.ptp(xs), np.ptp(ys), 1e-300)
    pad = 0.14 * span
    cx, cy = (xs.max() + xs.min()) / 2, (ys.max() + ys.min()) / 2
    half = span / 2 + pad
    ax.set_xlim(cx - half, cx + half)
    ax.set_ylim(cy - half, cy + half)
    ax.set_aspect("equal", adjustable="box")
