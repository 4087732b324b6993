"""The one gradlab theme: seaborn "paper" context, colour-blind-safe colours, readable labels.

Every figure takes its colours and labels from here, so a task, a task pair or a method has
the same colour and the same name in every figure of a paper. Colours come from the
Okabe-Ito and Paul Tol palettes, both designed to stay distinct under colour-vision
deficiency; tasks, pairs and methods draw from separate colours so that no colour means two
things in one figure.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib as mpl
import seaborn as sns

__all__ = [
    "set_theme",
    "theme_context",
    "theme_rc",
    "task_color",
    "pair_color",
    "method_color",
    "task_label",
    "pair_label",
    "method_label",
    "block_label",
    "metric_label",
]

# Okabe-Ito blue, orange, bluish green.
TASK_COLORS = {"sst": "#0072B2", "para": "#E69F00", "sts": "#009E73"}
# Paul Tol "muted" wine, olive, indigo: unlike any task colour.
PAIR_COLORS = {"sst-para": "#882255", "sst-sts": "#999933", "para-sts": "#332288"}
METHOD_COLORS = {
    "frozen": "#0072B2",  # the frozen-encoder baseline (heads only), listed first
    "sum": "#000000",
    "mean": "#7F7F7F",
    "round_robin": "#D55E00",
    "pcgrad": "#CC79A7",
    "pcgrad_layerwise": "#882255",
    "mgda": "#56B4E9",
    "cagrad": "#44AA99",
    "imtl_g": "#DDCC77",
    "aligned_mtl": "#117733",
    "upgrad": "#332288",
    "dualproj": "#CC6677",
    "nash_mtl": "#661100",
    "random": "#BBBBBB",
    "gradvac": "#6699CC",
    "uncertainty": "#999933",
    "dwa": "#AA4499",
    "gradnorm": "#88CCEE",
    "sequential": "#E69F00",
}
# Fallback for names the tables above do not know: Tol "muted" + "bright", picked by a
# stable hash of the name (zlib.crc32, not hash(), which changes between processes).
_FALLBACK = [
    "#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99",
    "#999933", "#AA4499", "#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE",
    "#AA3377",
]  # fmt: skip

TASK_LABELS = {"sst": "SST", "para": "PARA", "sts": "STS", "overall": "Overall"}
METHOD_LABELS = {
    "frozen": "Frozen encoder (heads only)",
    "sum": "Sum",
    "mean": "Mean",
    "round_robin": "Round-robin",
    "sequential": "Sequential",
    "pcgrad": "PCGrad",
    "pcgrad_layerwise": "PCGrad (layer-wise)",
    "mgda": "MGDA",
    "cagrad": "CAGrad",
    "imtl_g": "IMTL-G",
    "aligned_mtl": "Aligned-MTL",
    "upgrad": "UPGrad",
    "dualproj": "DualProj",
    "nash_mtl": "Nash-MTL",
    "random": "Random",
    "gradvac": "GradVac",
    "uncertainty": "Uncertainty",
    "dwa": "DWA",
    "gradnorm": "GradNorm",
}
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "macro_f1": "Macro-F1",
    "f1": "F1",
    "pearson": "Pearson r",
    "spearman": "Spearman ρ",
    "mean": "Mean of primary metrics",
    "score": "Score",
}

_SOURCE_LABELS = {"train": "training batches", "probe": "probe batches"}


def theme_rc(font_scale: float = 1.0) -> dict:
    """The rcParams of the gradlab theme (paper context, ticks style, export-ready fonts)."""
    rc = {}
    rc.update(sns.plotting_context("paper", font_scale=font_scale))
    rc.update(sns.axes_style("ticks"))
    rc.update(
        {
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.color": "#E5E5E5",
            "grid.linewidth": 0.6,
            "axes.prop_cycle": mpl.cycler(color=sns.color_palette("colorblind")),
            "legend.frameon": False,
            "lines.linewidth": 1.3,
            "image.cmap": "vlag",
            # Type 42 (TrueType) fonts in PDF/PS: editable text, accepted by every venue
            # (Type 3 bitmaps are rejected by some submission checkers).
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "savefig.dpi": 300,
            "savefig.bbox": "tight",
            "savefig.pad_inches": 0.02,
            "figure.dpi": 100,
        }
    )
    return rc


def font_scale_for(inches: float) -> float:
    """Font scale of the theme for a figure ``inches`` wide: smaller type in a column (the
    paper context's 8-9 pt would take a third of a 3-inch figure's height)."""
    return 0.85 if inches < 4 else 1.0


def set_theme(font_scale: float = 1.0) -> None:
    """Apply the gradlab theme globally (call once at the top of a notebook or script)."""
    mpl.rcParams.update(theme_rc(font_scale))


@contextmanager
def theme_context(font_scale: float = 1.0, rc: dict | None = None) -> Iterator[None]:
    """The gradlab theme (plus ``rc``) for the duration of a ``with`` block.

    Interactive mode is left as the block leaves it: Jupyter's inline backend turns it on
    when the first figure is made, and restoring the old value would stop every later
    figure of the session from showing.
    """
    interactive = mpl.is_interactive()
    try:
        with mpl.rc_context({**theme_rc(font_scale), **(rc or {})}):
            try:
                yield
            finally:
                interactive = mpl.is_interactive()
    finally:
        mpl.interactive(interactive)


def _fallback_color(name: str) -> str:
    return _FALLBACK[zlib.crc32(name.encode()) % len(_FALLBACK)]


def task_color(task: str) -> str:
    """Fixed colour of a task ("sst", "para", "sts"; others get a stable fallback)."""
    return TASK_COLORS.get(task) or _fallback_color("task:" + task)


def pair_color(pair: str) -> str:
    """Fixed colour of an unordered task pair "a-b" (ordered "a→b" uses its pair's colour)."""
    a, b = split_pair(pair)
    return (
        PAIR_COLORS.get(f"{a}-{b}")
        or PAIR_COLORS.get(f"{b}-{a}")
        or _fallback_color("pair:" + "-".join(sorted((a, b))))
    )


def method_color(method: str) -> str:
    """Fixed colour of a method or method variant ("pcgrad (round_robin)" -> pcgrad's)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    base = method.split(" (")[0]
    return METHOD_COLORS.get(base) or _fallback_color("method:" + base)


def task_label(task: str) -> str:
    """Readable task name: "sst" -> "SST"."""
    return TASK_LABELS.get(task, task.upper())


def pair_label(pair: str) -> str:
    """Readable pair name: "sst-para" -> "SST–PARA", ordered "sst→para" -> "SST→PARA"."""
    if "→" in pair:
        i, j = pair.split("→", 1)
        return f"{task_label(i)}→{task_label(j)}"
    a, b = split_pair(pair)
    return f"{task_label(a)}–{task_label(b)}"


def method_label(method: str) -> str:
    """Readable method name: "pcgrad" -> "PCGrad"; variants keep their schedule."""
    if method in METHOD_LABELS:
        return METHOD_LABELS[method]
    if " (" in method and method.endswith(")"):
        base, schedule = method[:-1].split(" (", 1)
        return f"{method_label(base)} ({method_label(schedule).lower()})"
    return method


def block_label(block: str, short: bool = False) -> str:
    """A block's name in figures: the data's own name ("embeddings", "layer.0" ... 0-based as
    in the model's parameter names, "pooler", "encoder"), so a label read off a heatmap or
    legend is what ``block=`` and the frames' ``block`` column take. One naming everywhere;
    ``short`` is accepted for backward compatibility and changes nothing."""
    del short
    return str(block)


def metric_label(metric: str) -> str:
    """Readable metric name: "pearson" -> "Pearson r"."""
    return METRIC_LABELS.get(metric, metric.replace("_", " ").capitalize())


def source_label(source: str) -> str:
    """Where the gradients came from: "train" -> "training batches"."""
    return _SOURCE_LABELS.get(source, source)


def split_pair(pair: str) -> tuple[str, str]:
    """ "sst-para" -> ("sst", "para"); "sst→para" -> ("sst", "para")."""
    sep = "→" if "→" in pair else "-"
    if sep not in pair:
        raise ValueError(f"pair {pair!r} is not of the form 'a-b' or 'a→b'")
    a, b = pair.split(sep, 1)
    return a, b
