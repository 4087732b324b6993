"""Does a drawn figure fit its canvas? Collapsed axes, overlapping text, clipped artists.

`export` runs `layout_problems` on every figure it writes at a width and refuses to write a
broken file; the tests run it on every figure kind at every width preset. Everything is
measured on the rendered figure (window extents in pixels), so it checks what a reader sees.
"""

from __future__ import annotations

import warnings

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

__all__ = ["layout_problems", "visible_texts"]

MIN_AXES_INCHES = 0.35  # shortest side of a data Axes below which it is unreadable
TOLERANCE_PX = 1.0  # anti-aliasing slack for overlaps and canvas edges


def layout_problems(fig: Figure) -> list[str]:
    """What is broken in ``fig`` as drawn at its current size: one line per problem.

    Checks that every visible Axes keeps a readable size (``MIN_AXES_INCHES``; colorbars
    only need a positive size), that no two visible texts overlap (titles, labels, tick
    labels, legend entries, annotations, compared by their window extents) and that no
    text, legend or Axes reaches outside the canvas.
    """
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # twice: a layout engine places the Axes with the tick labels of the previous draw,
        # and the ticks of the new sizes may differ (a saved file is never a first draw)
        fig.canvas.draw()
        fig.canvas.draw()
    for w in caught:
        if "collapsed" in str(w.message) or "not compatible" in str(w.message):
            problems.append(f"layout: {w.message}")
    renderer = fig.canvas.get_renderer()
    canvas = Bbox.from_bounds(0, 0, *fig.canvas.get_width_height())
    dpi = fig.dpi
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        box = ax.get_window_extent(renderer)
        colorbar = hasattr(ax, "_colorbar")
        least = 1.0 if colorbar else MIN_AXES_INCHES * dpi
        if min(box.width, box.height) < least:
            problems.append(f"axes {_name(ax)!r} collapsed to {box.width / dpi:.2f} x "
                            f"{box.height / dpi:.2f} in")  # fmt: skip
        if not _inside(box, canvas):
            problems.append(f"axes {_name(ax)!r} reaches outside the canvas")
    texts = visible_texts(fig)
    extents = [(t, t.get_window_extent(renderer)) for t in texts]
    for t, box in extents:
        if not _inside(box, canvas):
            problems.append(f"text {t.get_text()!r} is clipped at the canvas edge")
    for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]:
        if legend is not None and legend.get_visible():
            if not _inside(legend.get_window_extent(renderer), canvas):
                problems.append("a legend reaches outside the canvas")
    for k, (a, box_a) in enumerate(extents):
        for b, box_b in extents[k + 1 :]:
            if _overlap(box_a, box_b):
                problems.append(f"texts {a.get_text()!r} and {b.get_text()!r} overlap")
    return problems


def visible_texts(fig: Figure) -> list[Text]:
    """Every text a reader sees in ``fig``: figure texts, titles, axis labels, drawn tick
    labels, annotations and legend texts (empty and invisible ones left out)."""
    out: list[Text] = [*fig.texts]
    if getattr(fig, "_suptitle", None) is not None:
        out.append(fig._suptitle)
    for legend in fig.legends:
        out += [*legend.get_texts(), legend.get_title()]
    for ax in fig.axes:
        if ax.get_visible():
            out += _axes_texts(ax)
    return [t for t in dict.fromkeys(out) if _shown(t)]


def _axes_texts(ax: Axes) -> list[Text]:
    out = [ax.title, ax._left_title, ax._right_title, *ax.texts]
    for axis in (ax.xaxis, ax.yaxis):
        if not axis.get_visible():
            continue
        out += [axis.label, axis.get_offset_text()]
        for tick in axis._update_ticks():  # the ticks drawn: inside the view limits
            out += [lab for lab in (tick.label1, tick.label2) if lab.get_visible()]
    legend = ax.get_legend()
    if legend is not None and legend.get_visible():
        out += [*legend.get_texts(), legend.get_title()]
    return out


def _shown(t: Text) -> bool:
    if not t.get_visible() or not t.get_text().strip():
        return False
    parent = t.axes
    return parent is None or parent.get_visible()


def _inside(box: Bbox, canvas: Bbox) -> bool:
    return (box.x0 >= canvas.x0 - TOLERANCE_PX and box.y0 >= canvas.y0 - TOLERANCE_PX
            and box.x1 <= canvas.x1 + TOLERANCE_PX and box.y1 <= canvas.y1 + TOLERANCE_PX)


def _overlap(a: Bbox, b: Bbox) -> bool:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width > TOLERANCE_PX and height > TOLERANCE_PX


def _name(ax: Axes) -> str:
    return ax.get_title(loc="left") or ax.get_title() or ax.get_label() or "untitled"
