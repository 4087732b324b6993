"""The catalogue of figures that ``gradlab figures``, ``compare`` and ``demo`` write.

`run_figures` and `comparison_figures` name every figure of a run, or of runs compared, as
a function that builds it at a given width (so its layout and legend are made for that
width, never squeezed afterwards); `write_figures` exports them. Task pairs come from the
data, so runs of any task set get their per-pair figures.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from gradlab.methods import METHODS
from gradlab.plot import _axes, _data, _summaries, _theme
from gradlab.plot._arrows import gradient_arrows
from gradlab.plot._calibrated import expected_cosine_over_training, has_replicates
from gradlab.plot._export import export, resolve_width
from gradlab.plot._figures import compare, plot_conflicts
from gradlab.plot._layout import axes_figure, legend_below
from gradlab.plot._tables import comparison_table, table_to_csv, table_to_latex
from gradlab.run_frames import gradient_sources
from gradlab.runs import Runs

__all__ = ["run_figures", "comparison_figures", "write_figures", "write_comparison",
           "RUN_FIGURES"]

Maker = Callable[[], Figure]

#: one-axes figures of a run: (file name, axes-level function, keyword arguments)
RUN_FIGURES: tuple[tuple[str, Callable, dict], ...] = (
    ("training_curves", _axes.training_curves, {}),
    ("training_loss", _axes.training_curves, {"kind": "loss"}),
    ("cosine_train", _axes.cosine_over_training, {"source": "train"}),
    ("cosine_probe", _axes.cosine_over_training, {"source": "probe"}),
    ("conflict_rate", _axes.conflict_rate, {}),
    ("projection_rate", _axes.projection_rate, {}),
    ("task_weights", _axes.task_weights, {}),
    ("s_conflict", _summaries.s_conflict_bars, {}),
    ("cosine_distribution", _summaries.cosine_distribution, {}),
    ("gradient_norms", _axes.gradient_norms, {}),
    ("magnitude_similarity", _axes.magnitude_similarity, {}),
    ("condition_number", _axes.condition_number, {}),
    ("gradient_arrows", gradient_arrows, {"source": "probe"}),
    ("gradient_arrows_pair", gradient_arrows, {"source": "probe", "basis": "pair"}),
)


def run_figures(run) -> dict[str, Callable[[str | float], Figure]]:
    """Every figure of one run: file name -> function of the width that builds it (with
    "expected_cosine" when the run has replicate probes)."""
    figures: dict[str, Callable[[str | float], Figure]] = {
        "conflicts": lambda width: plot_conflicts(run, width=width)
    }
    for pair in pairs_of(run, "probe"):
        figures[f"layer_heatmap_{pair}"] = _one(_axes.layer_heatmap, run, pair=pair,
                                                source="probe")  # fmt: skip
    unfit = _unfit_reasons(run)
    for name, fn, kwargs in RUN_FIGURES:
        figures[name] = _refused(unfit[name]) if name in unfit else _one(fn, run, **kwargs)
    if has_replicates(run):  # replicate probes (K >= 2): the noise-corrected cosines
        figures["expected_cosine"] = _one(expected_cosine_over_training, run)
    return figures


def _unfit_reasons(run) -> dict[str, str]:
    """Figures of RUN_FIGURES that would only draw a constant for ``run``, with the reason."""
    reasons = {}
    method = METHODS.get(run.method)
    if not logs_gradients(run):
        reasons["projection_rate"] = reasons["task_weights"] = (
            f"run {run.name!r} logs no gradient data (its method never sees a shared gradient)")
    if method is None or not method.projects:
        reasons["projection_rate"] = (f"method {run.method!r} never projects (its projection "
                                      "rate is 0 at every step)")
    if run.schedule == "round_robin":
        reasons["task_weights"] = ("round-robin trains one task per step: its task weights are "
                                   "the schedule (1 for that task, 0 for the others)")
    return reasons


def _refused(reason: str) -> Callable[[str | float], Figure]:
    def make(width: str | float) -> Figure:
        raise ValueError(reason)
    return make


def logs_gradients(run) -> bool:
    """Whether ``run`` logs any Gramian (train or probe rows), by its schedule and config."""
    return not all(gradient_sources(run.schedule, run.config).values())


def comparison_figures(runs) -> dict[str, Callable[[str | float], Figure]]:
    """The figures comparing ``runs`` (Runs): the comparison, per-pair probe cosines,
    conflict rates and cosine distributions, training curves, and each run's dashboard and
    arrow diagram."""
    figures: dict[str, Callable[[str | float], Figure]] = {
        "compare": lambda width: compare(runs, width=width)[0]
    }
    # runs that log no Gramians (a frozen encoder, probe_every=0 on round-robin) are in the
    # comparison and the curves, not in the gradient figures
    gradient_runs = [r for r in runs.runs if logs_gradients(r)]
    with_gradients = runs if len(gradient_runs) == len(runs.runs) else Runs(gradient_runs)
    # one file per pair: methods x pairs x seed bands in one axes is unreadable past 2 methods
    for pair in pairs_of(with_gradients, "probe") if gradient_runs else []:
        figures[f"cosine_probe_{pair}"] = _one(_axes.cosine_over_training, with_gradients,
                                               source="probe", pair=pair)  # fmt: skip
        figures[f"conflict_rate_probe_{pair}"] = _one(_axes.conflict_rate, with_gradients,
                                                      source="probe", pair=pair)  # fmt: skip
        figures[f"cosine_distribution_{pair}"] = _one(_summaries.cosine_distribution,
                                                      with_gradients, source="probe",
                                                      pair=pair)  # fmt: skip
    figures["training_curves"] = _one(_axes.training_curves, runs)
    figures["training_loss"] = _one(_axes.training_curves, runs, kind="loss")
    for one in gradient_runs:
        figures[f"conflicts_{one.name}"] = lambda width, one=one: plot_conflicts(one, width=width)
        figures[f"gradient_arrows_{one.name}"] = _one(gradient_arrows, one, source="probe")
    return figures


def write_figures(
    figures: dict[str, Callable[[str | float], Figure]],
    out: str | Path,
    width: str | float = "icml-column",
    formats: Sequence[str] = ("pdf", "png"),
) -> list[Path]:
    """Build each figure at ``width`` and export it under ``out``; returns the written files.

    A figure the data cannot give (e.g. projection rates of a summed-loss run, whose method
    never projects) is skipped
    with a line on stderr naming the reason. A figure that does not fit ``width`` (see
    `export`) is not written, and the others are; then `FigureFitError` names every such
    figure.
    """
    out = Path(out)
    written: list[Path] = []
    unfit: list[str] = []
    for name, make in figures.items():
        try:
            fig = make(width)
        except (ValueError, KeyError) as err:
            print(f"skipped {name}: {err}", file=sys.stderr)
            plt.close("all")
            continue
        try:
            written += export(fig, out / name, width=width, formats=formats)
        except ValueError as err:  # does not fit: nothing of it written
            unfit.append(f"{name}: {err}")
        finally:
            plt.close(fig)
    if unfit:
        raise FigureFitError(f"{len(unfit)} figure(s) not written at width {width!r} (the "
                             f"other {len(written)} files were): " + " | ".join(unfit))
    return written


class FigureFitError(ValueError):
    """Some figures could not be laid out at the asked width; the others were written."""


def write_comparison(runs, out: str | Path, width: str | float = "icml-page") -> list[Path]:
    """`comparison_figures` plus the comparison table as CSV and LaTeX."""
    out = Path(out)
    written = write_figures(comparison_figures(runs), out, width)
    table = comparison_table(runs)
    written += [table_to_csv(table, out / "compare.csv")]
    table_to_latex(table, out / "compare.tex")
    return [*written, out / "compare.tex"]


def pairs_of(data, source: str) -> list[str]:
    """Task pairs with cosines from ``source`` in a Run or Runs, in the project's order."""
    try:
        cos = data.cosines(source=source)
    except ValueError:
        return []
    return _data.order_pairs(cos["pair"].unique()) if len(cos) else []


def _one(fn: Callable, data, **kwargs) -> Callable[[str | float], Figure]:
    """A maker of a one-Axes figure of ``fn(data, **kwargs)`` at a width: the legend goes
    under the Axes at column widths, where beside it would squeeze the data."""

    def make(width):
        # the arrow diagram has an equal aspect: a squarer figure gives it more room
        fig, ax = axes_figure(width, aspect=1.0 if fn is gradient_arrows else None)
        with _theme.theme_context(_theme.font_scale_for(resolve_width(width))):
            fn(data, ax=ax, **kwargs)
            if resolve_width(width) < 4 and fn is not gradient_arrows:  # its own is inside
                legend_below(fig, [ax], fontsize="small")
        return fig

    return make
