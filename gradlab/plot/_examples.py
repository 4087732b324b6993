"""Per-example gradient figures: which examples pull with or against each task.

Both take an `ExampleGradients` (``gradlab.per_example.example_gradients``) or the tidy
frame of its `alignment` / `extremes`.

- `example_alignment` (axes-level: ``ax=`` in, Axes out): each example's cosine with each
  task's mean gradient (leave-one-out), one strip or violin per (example's task → target
  task) pair, coloured by the target task. The pairs whose target is the example's own task
  are the reference: how far the examples of a task agree with the rest of it; a cross-task
  cosine means something only against that spread.
- `conflicting_examples` (figure-level: a Figure at a paper width, as tall as its text): the
  most conflicting (or aligned) examples of each pair, with their text.

    >>> from gradlab.per_example import example_gradients
    >>> grads = example_gradients(model, examples, tokenizer=tok)    # doctest: +SKIP
    >>> ax = example_alignment(grads, kind="violin")                 # doctest: +SKIP
    >>> fig = conflicting_examples(grads, k=3, pair="sst→para")       # doctest: +SKIP
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradlab.plot import _theme
from gradlab.plot._export import WIDTHS

__all__ = ["conflicting_examples", "example_alignment"]

_ALIGNMENT_COLUMNS = ("example", "task", "target", "pair", "cosine")
_EXTREME_COLUMNS = ("pair", "kind", "rank", "example", "cosine", "text")


def example_alignment(data, *, kind: str = "strip", block: str = "encoder",
                      pair: str | Sequence[str] | None = None, legend: str | bool = "outside",
                      ax: Axes | None = None) -> Axes:
    """Cosine of every example's gradient with each task's mean gradient (leave-one-out).

    data: an ExampleGradients or its ``alignment(block)`` frame. kind: "strip" (one dot per
    example, a black bar at the median) or "violin" (the distribution, quartiles inside).
    pair: ordered pairs "task→target" to draw (default all; the example's task groups the
    x axis). One colour per target task; a dashed line at 0 (no alignment).
    """
    if kind not in ("strip", "violin"):
        raise ValueError(f"kind must be 'strip' or 'violin', got {kind!r}")
    df = _frame(data, "alignment", _ALIGNMENT_COLUMNS, block=block)
    order = list(dict.fromkeys(df["task"]))  # the examples' order, before any selection
    if pair is not None:
        wanted = [pair] if isinstance(pair, str) else list(pair)
        missing = sorted(set(wanted) - set(df["pair"]))
        if missing:
            raise ValueError(f"pair {missing} not in the data; pairs: {sorted(set(df['pair']))}")
        df = df[df["pair"].isin(wanted)]
    df = df.dropna(subset=["cosine"])
    if df.empty:
        raise ValueError("no defined cosine to draw (zero gradients, or one example per task)")
    tasks = [t for t in order if t in set(df["task"])]
    targets = [t for t in dict.fromkeys([*order, *df["target"]]) if t in set(df["target"])]
    palette = {t: _theme.task_color(t) for t in targets}
    ax = plt.gca() if ax is None else ax
    ax.axhline(0.0, color="0.25", lw=0.8, ls="--", zorder=0)
    common = {"data": df, "x": "task", "y": "cosine", "hue": "target", "order": tasks,
              "hue_order": targets, "palette": palette, "ax": ax, "legend": bool(legend)}
    if kind == "strip":
        sns.stripplot(**common, dodge=True, jitter=0.25, size=3, alpha=0.75)
        # the median of each pair as a short black bar
        width = 0.8 / len(targets)
        for i, task in enumerate(tasks):
            for k, target in enumerate(targets):
                values = df.loc[(df["task"] == task) & (df["target"] == target), "cosine"]
                if len(values):
                    x = i - 0.4 + width * (k + 0.5)
                    ax.hlines(values.median(), x - 0.35 * width, x + 0.35 * width,
                              color="black", lw=1.4, zorder=5)
    else:
        sns.violinplot(**common, inner="quart", cut=0, density_norm="width", linewidth=0.7,
                       saturation=0.85)
    ax.set_xticks(range(len(tasks)), [_theme.task_label(t) for t in tasks])
    ax.set(xlabel="Task of the example", ylabel="Cosine with task mean")
    if legend:
        handles, labels = ax.get_legend_handles_labels()
        labels = [_theme.task_label(lbl) for lbl in labels]
        if legend == "outside":  # one row under the Axes: fits a column-width figure
            ax.legend(handles, labels, title="Mean gradient of", loc="upper center",
                      bbox_to_anchor=(0.5, -0.3), ncol=len(labels), borderaxespad=0.0,
                      handletextpad=0.2, columnspacing=1.0, title_fontsize="small",
                      fontsize="small")
        else:
            ax.legend(handles, labels, title="Mean gradient of")
    n = df["example"].nunique()
    where = _theme.block_label(block) if block != "encoder" else "encoder"
    ax.set_title(f"{n} examples · leave-one-out means · {where}", loc="left",
                 fontsize="small", color="0.3")
    return ax


def conflicting_examples(data, *, k: int = 3, pair: str | Sequence[str] | None = None,
                         kind: str = "conflicting", block: str = "encoder",
                         width: str | float = "icml-page", max_chars: int = 240,
                         font_scale: float = 1.0) -> Figure:
    """A table figure of the k most conflicting (or aligned) examples per pair, with text.

    data: an ExampleGradients or its ``extremes(k, block)`` frame. pair: ordered pairs
    "task→target" (default: every cross-task pair). kind: "conflicting" (lowest cosine with
    the target task's mean gradient) or "aligned" (highest). width: a paper width preset
    (`gradlab.plot.WIDTHS`) or inches; the height follows the text, which is wrapped to the
    width and cut at ``max_chars`` characters. Returns the Figure (export it at the same
    width so nothing is rescaled).
    """
    if kind not in ("conflicting", "aligned"):
        raise ValueError(f"kind must be 'conflicting' or 'aligned', got {kind!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    inches = WIDTHS[width] if isinstance(width, str) and width in WIDTHS else width
    if not isinstance(inches, int | float) or isinstance(inches, bool) or inches <= 2:
        raise ValueError(f"width must be a preset {sorted(WIDTHS)} or inches > 2, got {width!r}")
    df = _frame(data, "extremes", _EXTREME_COLUMNS, block=block, k=k)
    df = df[(df["kind"] == kind) & (df["rank"] <= k)]
    if pair is None:
        pairs = [p for p in dict.fromkeys(df["pair"]) if len(set(p.split("→"))) == 2]
    else:
        pairs = [pair] if isinstance(pair, str) else list(pair)
        missing = sorted(set(pairs) - set(df["pair"]))
        if missing:
            raise ValueError(f"pair {missing} not in the data; pairs: {sorted(set(df['pair']))}")
    if df[df["pair"].isin(pairs)].empty:
        raise ValueError(f"no {kind} examples for pairs {pairs}")

    with _theme.theme_context(font_scale):
        size = plt.rcParams["font.size"] * 0.85  # points
        line = 1.3 * size / 72  # inches per text line
        columns = (0.0, 1.1, 1.65)  # pair, cosine, text (inches from the left)
        chars = max(20, int((inches - columns[2]) * 72 / (0.56 * size)))
        rows = []  # (pair, cosine, wrapped lines)
        for p in pairs:
            part = df[df["pair"] == p].sort_values("rank")
            for _, row in part.iterrows():
                text = " ".join(str(row["text"]).split()).replace(" ||| ", "  ‖  ")
                if len(text) > max_chars:
                    text = text[: max_chars - 1].rstrip() + "…"
                rows.append((p, float(row["cosine"]), textwrap.wrap(text, chars) or [""]))
        label = "most conflicting" if kind == "conflicting" else "most aligned"
        where = _theme.block_label(block) if block != "encoder" else "whole encoder"
        title = textwrap.wrap(f"The {k} {label} examples per task pair: cosine of the "
                              f"example's gradient with the target task's mean gradient over "
                              f"its other examples ({where})", int(inches * 72 / (0.56 * size)))
        n_lines = sum(len(r[2]) for r in rows) + 0.4 * len(rows) + len(title)
        height = line * (n_lines + 2.4)
        fig = plt.figure(figsize=(inches, height))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, inches)
        ax.set_ylim(height, 0)
        ax.axis("off")
        ax.text(0, 0.2 * line, "\n".join(title), va="top", fontsize=size, color="0.3",
                linespacing=1.3)
        y = (len(title) + 0.5) * line
        for x, name in zip(columns, ("Example → task", "Cosine", "Text"), strict=True):
            ax.text(x, y, name, va="top", fontsize=size, fontweight="bold")
        y += 1.3 * line
        ax.axhline(y - 0.2 * line, color="0.2", lw=0.6)
        previous = None
        for p, cosine, lines in rows:
            if previous is not None and p != previous:
                ax.axhline(y, color="0.75", lw=0.4)
            y += 0.2 * line
            if p != previous:
                ax.text(columns[0], y, _theme.pair_label(p), va="top", fontsize=size,
                        color=_theme.pair_color(p), fontweight="bold")
            ax.text(columns[1], y, f"{cosine:+.3f}", va="top", fontsize=size,
                    family="monospace")
            ax.text(columns[2], y, "\n".join(lines), va="top", fontsize=size,
                    linespacing=1.3)
            y += line * len(lines) + 0.2 * line
            previous = p
        ax.axhline(y, color="0.2", lw=0.6)
    return fig


def _frame(data, accessor: str, columns: Sequence[str], **kwargs) -> pd.DataFrame:
    """The tidy frame of ``data``: an ExampleGradients' accessor, or a frame checked for the
    columns the figure needs."""
    if isinstance(data, pd.DataFrame):
        missing = [c for c in columns if c not in data.columns]
        if missing:
            raise ValueError(f"data lacks the columns {missing} (pass an ExampleGradients or "
                             f"its {accessor}() frame)")
        return data
    method = getattr(data, accessor, None)
    if method is None:
        raise TypeError(f"data must be an ExampleGradients or a DataFrame, found "
                        f"{type(data).__name__}")
    return method(**kwargs)
