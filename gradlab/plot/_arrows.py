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
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from gradlab import replay
from gradlab.plot import _theme
from gradlab.significance import variant

__all__ = ["gradient_arrows", "arrow_coordinates"]


def gradient_arrows(
    data,
    *,
    step: int | None = None,
    source: str = "train",
    block: str = "encoder",
    methods: Sequence[str] = ("sum", "pcgrad"),
    logged: bool = True,
    basis: str | None = None,
    pair=None,
    run: str | None = None,
    tasks: Sequence[str] | None = None,
    legend: str | bool = "below",
    ax: Axes | None = None,
) -> Axes:
    """Task gradients and method updates at ``step``, exactly, in a plane of the gradients.

    ``data``: a Run, Runs (with ``run=`` naming one when there are several) or a Gramian
    [T, T] (then ``tasks`` names its rows). ``methods``: registry names replayed on the
    stored Gramian (`gradlab.replay.method_weights`); ``logged`` adds the update the run's
    own method applied (train source only; it replaces the replay of the same method, whose
    random choices, e.g. PCGrad's task order, may differ). ``basis``: "pca" (the top two
    principal directions of the task gradients, the plane that holds the most of them and
    so of any update; the default) or "pair" (x along g_i, y the part of g_j orthogonal to
    it; ``pair`` "a-b", default the first two tasks; the default when ``pair`` is given).
    The title names the plane. Each legend
    entry states the share of that vector's length outside the drawn plane. ``legend``:
    "below" (inside the Axes, in a band kept free under the arrows, so any save keeps it),
    "outside" (right of the Axes; needs a layout engine or a tight bounding box to be
    saved), "inside" (matplotlib's best spot) or False. Coordinates: `arrow_coordinates`.

    >>> ax = gradient_arrows(run, step=40, methods=("sum", "pcgrad", "mgda"))  # doctest: +SKIP
    """
    if legend not in ("below", "outside", "inside", True, False, None):
        raise ValueError(f"legend must be 'below', 'outside', 'inside' or False, got {legend!r}")
    coords = arrow_coordinates(
        data, step=step, source=source, block=block, methods=methods, logged=logged,
        basis=basis, pair=pair, run=run, tasks=tasks,
    )  # fmt: skip
    ax = plt.gca() if ax is None else ax
    handles, labels = [], []
    tips = coords[["x", "y"]].to_numpy(dtype=float)
    span = max(float(np.ptp(np.r_[0.0, tips[:, 0]])), float(np.ptp(np.r_[0.0, tips[:, 1]])),
               1e-300)  # fmt: skip
    for k, row in enumerate(coords.itertuples()):
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
            others = np.delete(tips, k, axis=0)
            text = ax.annotate(
                row.label, xy=(row.x, row.y), xytext=_label_offset(tips[k], others, span),
                ha="center", va="center", textcoords="offset points", color=color,
                fontsize="small", fontweight="bold", annotation_clip=False,
            )  # fmt: skip
            text.set_gid(f"gradlab-label:{row.name}")
        handles.append(Line2D([], [], color=color, lw=1.3 if is_task else 2.0))
        labels.append(f"{row.label}: {_outside_text(row.outside)}")
    ax.plot([0], [0], "o", color="0.2", ms=2.5, zorder=5)
    ax.axhline(0, color="0.8", lw=0.6, zorder=0)
    ax.axvline(0, color="0.8", lw=0.6, zorder=0)
    ax.grid(False)
    attrs = coords.attrs
    if attrs["basis"] == "pair":
        a, b = attrs["pair"]
        ga, gb = _grad_symbol(a), _grad_symbol(b)
        ax.set(xlabel=f"along {ga}", ylabel=f"part of {gb} ⊥ {ga}")
        plane = f"plane of {ga}, {gb}"
    else:
        ax.set(xlabel="1st principal direction", ylabel="2nd principal direction")
        plane = "principal plane (PCA)"
    title = "length outside the plane"
    below = None
    if legend == "outside":
        ax.legend(handles, labels, title=title, frameon=False, handlelength=1.5,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0))  # fmt: skip
    elif legend == "inside":
        ax.legend(handles, labels, title=title, frameon=False, handlelength=1.5, loc="best")
    elif legend:
        below = (handles, labels, title)
    where = f"{_theme.source_label(attrs['source'])}"
    if attrs["block"] != "encoder":
        where += f", {_theme.block_label(attrs['block'])}"
    head = f"{_theme.method_label(attrs['method'])} run" if attrs.get("method") else ""
    if attrs.get("run") and attrs["run"] != attrs.get("method"):
        head = f"{attrs['run']} ({head})" if head else attrs["run"]
    step_text = f"step {attrs['step']}, " if attrs.get("step") is not None else ""
    lines = [line for line in (head, f"{step_text}{where}", plane) if line]
    ax.set_title("\n".join(lines), loc="left", fontsize="small", color="0.3")
    _fit(ax, tips, below)
    return ax


def arrow_coordinates(
    data,
    *,
    step: int | None = None,
    source: str = "train",
    block: str = "encoder",
    methods: Sequence[str] = ("sum", "pcgrad"),
    logged: bool = True,
    basis: str | None = None,
    pair=None,
    run: str | None = None,
    tasks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The arrows of `gradient_arrows` as a frame: kind ("task" | "update"), name, label,
    weights (the coefficients c of v = cᵀJ), x, y, outside (share of ‖v‖ off the plane).

    ``attrs`` holds basis, pair (task names), step, source, block and run.
    """
    if basis is None:
        basis = "pca" if pair is None else "pair"
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
        applied = replay.logged_weights(run_obj, step, tasks)
    own = variant(run_obj.method, run_obj.schedule) if run_obj is not None else None
    for name in methods:
        if applied is not None and name == own:
            continue  # drawn once below, as what the run applied (PCGrad's order is random)
        names.append(name)
        kinds.append("update")
        labels.append(_theme.method_label(name))
        coeffs.append(replay.method_weights(name, G, step))
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
        "method": own,
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


def _label_offset(tip: np.ndarray, others: np.ndarray, span: float,
                  distance: float = 9.0) -> tuple[float, float]:
    """Label offset in points from an arrow tip: beyond the tip, turned away from the other
    arrows when one passes near (the direction whose label point lies farthest from them)."""
    n = float(np.hypot(*tip))
    if n == 0 or not np.isfinite(n):
        return (0.0, distance)
    base = np.arctan2(tip[1], tip[0])
    best, best_gap = base, -np.inf
    for turn in (0.0, 0.6, -0.6, 1.2, -1.2, 1.9, -1.9):
        angle = base + turn
        point = tip + 0.12 * span * np.array([np.cos(angle), np.sin(angle)])
        gap = min((_segment_distance(point, o) for o in others), default=np.inf)
        if gap > best_gap + 1e-3 * span:  # the straight-out direction wins ties
            best, best_gap = angle, gap
    return (distance * np.cos(best), distance * np.sin(best))


def _segment_distance(point: np.ndarray, tip: np.ndarray) -> float:
    """Distance from ``point`` to the arrow from the origin to ``tip``."""
    length2 = float(tip @ tip)
    if length2 == 0 or not np.isfinite(length2):
        return float(np.hypot(*point))
    t = float(np.clip(point @ tip / length2, 0.0, 1.0))
    return float(np.hypot(*(point - t * tip)))


def _fit(ax: Axes, tips: np.ndarray, legend) -> None:
    """Square, equal-aspect limits that hold the origin, every tip and every label, with a
    band kept free under them for the ``legend`` drawn inside the Axes (if any).

    Sizes of text are known only once drawn, so the figure is drawn and the limits set
    again until they settle (three rounds suffice: the band changes the Axes' shape once).
    """
    xs = np.r_[0.0, tips[:, 0]]
    ys = np.r_[0.0, tips[:, 1]]
    finite = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[finite], ys[finite]
    span = max(float(np.ptp(xs)), float(np.ptp(ys)), 1e-300)
    pad = 0.14 * span
    box = [xs.min() - pad, xs.max() + pad, ys.min() - pad, ys.max() + pad]
    _square(ax, box, 0.0)
    ax.set_aspect("equal", adjustable="box")
    fig = ax.figure
    if legend is not None:
        legend = _legend_inside(ax, *legend)
    for _ in range(3):
        fig.draw_without_rendering()
        renderer = fig.canvas.get_renderer()
        to_data = ax.transData.inverted()
        for text in ax.texts:
            if str(text.get_gid()).startswith("gradlab-label:"):
                (x0, y0), (x1, y1) = to_data.transform(text.get_window_extent(renderer))
                box = [min(box[0], x0), max(box[1], x1), min(box[2], y0), max(box[3], y1)]
        band = 0.0
        if legend is not None:
            height = legend.get_window_extent(renderer).height
            band = min(0.6, (height + 4.0) / max(ax.get_window_extent(renderer).height, 1.0))
        _square(ax, box, band)
    # The ticks of the final limits, fixed: otherwise the locator picks them after the layout
    # has made room for others (e.g. "-12.5" where it measured "-10"), and a label is cut.
    fig.draw_without_rendering()
    for axis in (ax.xaxis, ax.yaxis):
        lo, hi = sorted(axis.get_view_interval())
        axis.set_major_locator(mticker.FixedLocator(
            [t for t in axis.get_majorticklocs() if lo <= t <= hi]))


def _legend_inside(ax: Axes, handles, labels, title):
    """The legend at the bottom of the Axes, in two columns if they fit its width."""
    renderer = ax.figure.canvas.get_renderer()
    ax.figure.draw_without_rendering()
    for ncols in (2, 1):
        legend = ax.legend(handles, labels, title=title, frameon=False, handlelength=1.2,
                           loc="lower center", ncols=ncols, columnspacing=0.8,
                           fontsize="small", title_fontsize="small", borderaxespad=0.2)
        if ncols == 1 or (legend.get_window_extent(renderer).width
                          <= ax.get_window_extent(renderer).width):  # fmt: skip
            return legend
        legend.remove()
    return legend


def _square(ax: Axes, box: list[float], band: float) -> None:
    """Equal-aspect limits around ``box`` [x0, x1, y0, y1] shaped like the space the layout
    gives the Axes (so the arrows use all of it), with the lowest ``band`` share of the
    height left free (the legend's place)."""
    pos = ax.get_position(original=True)
    width_in, height_in = ax.figure.get_size_inches()
    shape = (pos.width * width_in) / max(pos.height * height_in, 1e-9)  # width / height
    width, height = box[1] - box[0], (box[3] - box[2]) / (1 - band)
    width, height = max(width, height * shape), max(height, width / shape)
    cx = (box[0] + box[1]) / 2
    top = box[3] + (height * (1 - band) - (box[3] - box[2])) / 2
    ax.set_xlim(cx - width / 2, cx + width / 2)
    ax.set_ylim(top - height, top)
