"""Figures built for a width: one-Axes figures and legends that go under the figure."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradlab.plot import _theme
from gradlab.plot._export import resolve_width

__all__ = ["axes_figure", "legend_below"]


def axes_figure(width: str | float, aspect: float | None = None) -> tuple[Figure, Axes]:
    """One Axes in a figure ``width`` wide (preset or inches), constrained layout from the
    start, in the gradlab theme's fonts for that width."""
    inches = resolve_width(width)
    if aspect is None:
        aspect = 0.8 if inches < 4 else 0.55
    with _theme.theme_context(_theme.font_scale_for(inches)):
        fig, ax = plt.subplots(figsize=(inches, inches * aspect), layout="constrained")
    return fig, ax


def legend_below(fig: Figure, axes: Sequence[Axes], title: str | None = None, **kwargs):
    """Merge the legends of ``axes`` into one legend under the figure (entries with the
    same label once), in as many columns as the figure's width holds. Needs constrained
    layout, which keeps room for it; returns the legend (None when there is none)."""
    handles, labels = [], []
    for ax in axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
            if text.get_text() not in labels:
                handles.append(handle)
                labels.append(text.get_text())
        title = title if title is not None else (legend.get_title().get_text() or None)
        legend.remove()
    return figure_legend(fig, handles, labels, title=title, **kwargs)


def figure_legend(fig: Figure, handles, labels, *, title: str | None = None, max_cols: int = 6,
                  **kwargs):
    """``fig.legend`` under the figure, with the most columns (up to ``max_cols``) that fit
    its width."""
    if not handles:
        return None
    renderer = fig.canvas.get_renderer()
    options = {"loc": "outside lower center", "frameon": False, "title": title,
               "title_fontsize": "small", **kwargs}
    for ncols in range(min(len(labels), max_cols), 0, -1):
        legend = fig.legend(handles, labels, ncols=ncols, **options)
        if ncols == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return legend
        legend.remove()
    return None
