"""gradlab plots: the figures of gradient-conflict papers, from a run's tidy frames.

Axes-level functions follow seaborn's contract: they take a Run, Runs or the tidy DataFrame
of the matching Run accessor, draw on ``ax=`` (default: the current Axes) and return the
Axes. Figure-level functions (`plot_conflicts`, `compare`) compose them. One theme
(`set_theme`) gives every task, task pair and method a fixed colour and a readable name;
`export` writes PDF (TrueType fonts), SVG and PNG (>= 300 dpi) at paper widths.

    >>> import gradlab
    >>> from gradlab import plot
    >>> plot.set_theme()                                          # doctest: +SKIP
    >>> fig = gradlab.plot_conflicts(gradlab.load_run("runs/pcgrad"))  # doctest: +SKIP
    >>> plot.export(fig, "figures/pcgrad/conflicts", width="icml-page")  # doctest: +SKIP
"""

from gradlab.plot._arrows import arrow_coordinates, gradient_arrows
from gradlab.plot._axes import (
    condition_number,
    conflict_rate,
    cosine_over_training,
    gradient_norms,
    layer_heatmap,
    magnitude_similarity,
    projection_rate,
    task_weights,
    training_curves,
)
from gradlab.plot._calibrated import expected_cosine_over_training
from gradlab.plot._catalogue import (
    comparison_figures,
    run_figures,
    write_comparison,
    write_figures,
)
from gradlab.plot._export import WIDTHS, export
from gradlab.plot._figures import compare, plot_conflicts
from gradlab.plot._fit import layout_problems
from gradlab.plot._summaries import (
    cosine_distribution,
    final_metrics,
    method_comparison,
    s_conflict_bars,
    seed_points,
)
from gradlab.plot._tables import comparison_table, table_to_csv, table_to_latex
from gradlab.plot._theme import (
    block_label,
    method_color,
    method_label,
    pair_color,
    pair_label,
    set_theme,
    task_color,
    task_label,
    theme_context,
)
from gradlab.significance import t_interval  # the one t interval, re-exported

__all__ = [
    # axes-level
    "training_curves",
    "cosine_over_training",
    "expected_cosine_over_training",
    "conflict_rate",
    "projection_rate",
    "task_weights",
    "layer_heatmap",
    "s_conflict_bars",
    "cosine_distribution",
    "gradient_norms",
    "magnitude_similarity",
    "condition_number",
    "gradient_arrows",
    "method_comparison",
    "seed_points",
    # data behind the figures
    "arrow_coordinates",
    "final_metrics",
    "t_interval",
    # figure-level and tables
    "plot_conflicts",
    "compare",
    "comparison_table",
    "table_to_latex",
    "table_to_csv",
    # theme and export
    "set_theme",
    "theme_context",
    "task_color",
    "pair_color",
    "method_color",
    "task_label",
    "pair_label",
    "method_label",
    "block_label",
    "export",
    "WIDTHS",
    "layout_problems",
    # the catalogue the CLI writes
    "run_figures",
    "comparison_figures",
    "write_figures",
    "write_comparison",
]
