"""Every figure kind exported at every width preset fits: no collapsed Axes, no text over
text, nothing cut at the canvas edge (`gradlab.plot.layout_problems` on the drawn figure);
and a figure that does not fit is refused, with no file written."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from helpers_runs import make_synthetic_run  # noqa: E402
from PIL import Image  # noqa: E402

from gradlab import plot  # noqa: E402
from gradlab.run import load_run, load_runs  # noqa: E402

WIDTHS = sorted(plot.WIDTHS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    dirs = [make_synthetic_run(root / name, method=method, schedule=schedule, steps=40,
                               probe_every=5)
            for name, method, schedule in (("sum", "sum", "joint"),
                                           ("round_robin", "sum", "round_robin"),
                                           ("pcgrad", "pcgrad", "joint"))]  # fmt: skip
    plot.set_theme()
    return load_runs(dirs)


def _pcgrad(runs):
    return runs.runs[[r.name for r in runs.runs].index("pcgrad")]


FIGURE_KINDS = {
    "dashboard": lambda runs, w: plot.plot_conflicts(_pcgrad(runs), width=w),
    "dashboard_of_runs": lambda runs, w: plot.plot_conflicts(runs, source="probe", width=w),
    "compare": lambda runs, w: plot.compare(runs, width=w)[0],
    "gradient_arrows": lambda runs, w: plot.run_figures(_pcgrad(runs))["gradient_arrows"](w),
    "gradient_arrows_pair": lambda runs, w: plot.run_figures(_pcgrad(runs))[
        "gradient_arrows_pair"](w),
    # replicate probes: expected cosines with gaps, and the raw cosine's noise-only band
    "expected_cosine": lambda runs, w: plot.run_figures(_pcgrad(runs))["expected_cosine"](w),
    "cosine_probe_noise_band": lambda runs, w: plot.run_figures(_pcgrad(runs))[
        "cosine_probe"](w),
}


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kind", sorted(FIGURE_KINDS))
def test_figure_fits_every_width_preset(runs, kind, width, tmp_path):
    fig = FIGURE_KINDS[kind](runs, width)
    assert plot.layout_problems(fig) == []
    (png,) = plot.export(fig, tmp_path / kind, width=width, formats=("png",))
    with Image.open(png) as im:
        assert im.width == pytest.approx(plot.WIDTHS[width] * 300, abs=2)
        assert im.height <= 9.5 * 300  # fits a page


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_every_catalogue_figure_fits_every_width_preset(runs, width, tmp_path):
    figures = {**{f"run-{k}": v for k, v in plot.run_figures(_pcgrad(runs)).items()},
               **plot.comparison_figures(runs)}
    for name, make in figures.items():
        fig = make(width)
        assert plot.layout_problems(fig) == [], name
        plt.close(fig)


#: MiniLM-L6's blocks: seven rows of labels in the per-layer panels
MINILM_BLOCKS = ("embeddings", *(f"layer.{i}" for i in range(6)))


@pytest.fixture(scope="module")
def minilm_shaped(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit-minilm")
    return {method: load_run(make_synthetic_run(root / method, method=method, steps=80,
                                                probe_every=8, blocks=MINILM_BLOCKS))
            for method in ("sum", "pcgrad")}


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("method", ["sum", "pcgrad"])
def test_dashboard_of_a_seven_block_run_fits_every_width_preset(minilm_shaped, method, width,
                                                                 tmp_path):
    # the stacked dashboard gives its per-layer panels (heatmap, S-conflict bars) a row of
    # height per block, and stays within a page (the demo's MiniLM runs failed at columns)
    fig = plot.plot_conflicts(minilm_shaped[method], width=width)
    assert plot.layout_problems(fig) == []
    assert fig.get_size_inches()[1] <= 9.5
    plt.close(fig)


def test_write_figures_writes_what_fits_and_names_what_does_not(runs, tmp_path):
    def squeezed(width):
        fig, axes = plt.subplots(1, 6, layout="constrained")
        for ax in axes:
            ax.set_ylabel("a long label that needs room " * 2)
        return fig

    figures = {"fits": lambda w: plot.plot_conflicts(_pcgrad(runs), width=w),
               "squeezed": squeezed}
    with pytest.raises(ValueError, match=r"1 figure\(s\) not written .*squeezed: the figure"):
        plot.write_figures(figures, tmp_path, width="icml-column", formats=("png",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fits.png"]


def test_export_refuses_a_figure_that_does_not_fit(tmp_path):
    fig, axes = plt.subplots(1, 6, layout="constrained")
    for ax in axes:
        ax.set_ylabel("a long label that needs room " * 2)
    with pytest.raises(ValueError, match="does not fit .*nothing was written"):
        plot.export(fig, tmp_path / "squeezed", width="icml-column")
    assert not list(tmp_path.iterdir())


def test_layout_problems_sees_overlaps_clipping_and_collapse():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.text(0.5, 0.5, "first text")
    ax.text(0.5, 0.5, "second text")
    ax.text(1.6, 0.5, "far beyond the right edge of the figure", transform=ax.transAxes)
    problems = plot.layout_problems(fig)
    assert any("overlap" in p and "first text" in p for p in problems)
    assert any("clipped" in p and "far beyond" in p for p in problems)
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_position([0.1, 0.1, 0.8, 0.05])  # 0.1 in tall
    assert any("collapsed" in p for p in plot.layout_problems(fig))
    fig, ax = plt.subplots(figsize=(3, 2), layout="constrained")
    ax.plot([0, 1], [0, 1])
    assert plot.layout_problems(fig) == []
