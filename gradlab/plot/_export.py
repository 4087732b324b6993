"""Export a figure at a paper's column or page width: PDF (Type 42 fonts), SVG, PNG >= 300 dpi."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
from matplotlib.figure import Figure

from gradlab.plot._fit import layout_problems

__all__ = ["export", "resolve_width", "WIDTHS"]

_CM = 1 / 2.54
# Text widths in inches.
WIDTHS = {
    "acl-column": 7.7 * _CM,
    "acl-page": 16.0 * _CM,
    "icml-column": 3.25,
    "icml-page": 6.75,
    "neurips": 5.5,
}
FORMATS = ("pdf", "svg", "png")


def export(
    fig: Figure,
    path: str | Path,
    width: str | float | None = None,
    height: float | None = None,
    formats: Sequence[str] | None = None,
    dpi: int = 300,
    check: bool = True,
) -> list[Path]:
    """Write ``fig`` for a paper and return the written paths.

    ``width`` is a preset (``"acl-column"`` 7.7 cm, ``"acl-page"`` 16 cm, ``"icml-column"``
    3.25 in, ``"icml-page"`` 6.75 in, ``"neurips"`` 5.5 in), a width in inches, or None to
    keep the figure's size. ``height`` in inches; None keeps the aspect ratio. Formats come
    from ``formats``, else from the suffix of ``path`` (``fig.pdf``), else PDF and PNG.
    PDFs embed TrueType (Type 42) fonts; PNGs are written at ``dpi`` (at least 300).

    Before writing, the drawn figure is checked (``check``; `layout_problems`): an Axes
    collapsed to nothing, texts printed over each other or cut at the canvas edge raise a
    ValueError naming them, and no file is written. A figure-level function builds a layout
    that fits when given the width (``plot_conflicts(run, width="icml-column")``).
    With a width the file is exactly that wide; a figure built with a layout engine
    (``layout="constrained"``, as every gradlab figure is) keeps it, one without gets its
    subplot margins fitted once (``tight_layout``; its engine is never switched after
    drawing, which breaks colorbars). Without a width the bounding box is tight.

    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> paths = export(fig, tmp / "fig", width="icml-column")  # doctest: +SKIP
    """
    path = Path(path)
    formats = _resolve_formats(path, formats)
    if dpi < 300:
        raise ValueError(f"dpi must be at least 300 for print, got {dpi}")
    if width is not None or height is not None:
        old_w, old_h = fig.get_size_inches()
        new_w = old_w if width is None else resolve_width(width)
        if height is None:
            height = old_h * new_w / old_w
        elif not height > 0:
            raise ValueError(f"height must be a positive number of inches, got {height!r}")
        fig.set_size_inches(new_w, height)
        # An exact width needs a layout that fits everything inside the figure (a tight
        # bounding box would change the width again). Switching a drawn figure to
        # constrained layout divides by zero on colorbars (matplotlib 3.11), so a figure
        # without an engine only has its margins fitted once.
        if fig.get_layout_engine() is None:
            fig.tight_layout(pad=0.3)
        bbox = "standard"
    else:
        bbox = "tight"

    if check:
        problems = layout_problems(fig)
        if bbox == "tight":  # the saved area grows to hold everything
            problems = [p for p in problems if "canvas" not in p]
        if problems:
            size = "x".join(f"{v:.2f}" for v in fig.get_size_inches())
            listed = "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
            raise ValueError(
                f"the figure does not fit {size} in ({width or 'its own size'}): {listed}. "
                "Build it for this width (figure-level functions take width=, e.g. "
                "plot_conflicts(run, width='icml-column')), or give it more height; "
                "nothing was written"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.with_suffix("") if path.suffix.lower().lstrip(".") in FORMATS else path
    written = []
    # bbox_inches=None would fall back to rcParams["savefig.bbox"], so it is set here
    rc = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "path", "savefig.bbox": bbox}
    with mpl.rc_context(rc):
        for fmt in formats:
            out = stem.with_name(stem.name + "." + fmt)
            fig.savefig(out, format=fmt, dpi=dpi, pad_inches=0.02)
            written.append(out)
    return written


def resolve_width(width: str | float) -> float:
    """Inches of a width preset or a number of inches."""
    if isinstance(width, str):
        if width not in WIDTHS:
            raise ValueError(f"unknown width preset {width!r}; presets: {sorted(WIDTHS)}")
        return WIDTHS[width]
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        raise ValueError(f"width must be a preset {sorted(WIDTHS)} or inches > 0, got {width!r}")
    return float(width)


def _resolve_formats(path: Path, formats: Sequence[str] | None) -> tuple[str, ...]:
    if formats is None:
        suffix = path.suffix.lower().lstrip(".")
        if suffix in FORMATS:
            return (suffix,)
        return ("pdf", "png")
    if isinstance(formats, str):
        formats = (formats,)
    resolved = tuple(f.lower().lstrip(".") for f in formats)
    unknown = [f for f in resolved if f not in FORMATS]
    if unknown or not resolved:
        raise ValueError(f"formats {list(formats)!r}: allowed are {list(FORMATS)}")
    return resolved
