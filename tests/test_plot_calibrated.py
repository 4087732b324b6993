"""Calibrated-conflict plots (issue 13 item 6): expected cosines over training, the noise-only
bands of raw cosines and conflict rates, the dashboard with replicate probes; and (issue 15
item 13) identical methods kept visible. Drawn data is checked against the Run accessors."""

from __future__ import annotations

import sqlite3
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from conftest import tiny_config  # noqa: E402
from helpers_runs import make_synthetic_run  # noqa: E402
from scipy.stats import norm  # noqa: E402

import gradlab  # noqa: E402
from gradlab import calibration, plot  # noqa: E402
from gradlab.plot._calibrated import NOISE_STYLE  # noqa: E402
from gradlab.run import load_run, load_runs  # noqa: E402
from gradlab.runs import Runs  # noqa: E402

Z = norm.ppf(0.975)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real tiny-BERT run with K=3 replicate probes at every step (about 20 s)."""
    root = tmp_path_factory.mktemp("calibrated")
    cfg = tiny_config(root, name="sum-k3", method="sum", steps=10, probe_every=1,
                      probe_replicates=3, train_limit=64, max_length=24,
                      save_checkpoints=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # truncation notices
        gradlab.train(None, **cfg)
    return load_run(root / "runs" / "sum-k3")


@pytest.fixture(scope="module")
def synthetic_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrated-synthetic")
    dirs = {name: make_synthetic_run(root / name, method=method, steps=40, probe_every=5)
            for name, method in (("sum", "sum"), ("mgda", "mgda"), ("pcgrad", "pcgrad"))}
    # a run stored without replicate probes (as before issue 13): its replicate table empty
    dirs["no-replicates"] = make_synthetic_run(root / "no-replicates", method="pcgrad",
                                               steps=40, probe_every=5)
    with sqlite3.connect(next((root / "no-replicates").glob("*.sqlite"))) as conn:
        conn.execute("DELETE FROM replicate_gramians")
    return dirs


def _grey_bands(ax):
    grey = mcolors.to_rgb(NOISE_STYLE["color"])
    return [c for c in ax.collections
            if len(c.get_facecolor()) and tuple(c.get_facecolor()[0][:3]) == grey]


def _band_at(collection, x):
    """(lo, hi) of a fill_between polygon at x."""
    verts = collection.get_paths()[0].vertices
    ys = verts[np.isclose(verts[:, 0], x), 1]
    return ys.min(), ys.max()


def test_expected_cosine_lines_bands_and_gaps_equal_the_accessor(tiny_run):
    frame = tiny_run.expected_cosines(window=4, blocks="encoder")
    assert frame["estimate"].notna().any() and frame["estimate"].isna().any()  # both kinds
    ax = plot.expected_cosine_over_training(tiny_run, window=4)
    raw = tiny_run.cosines(source="probe", blocks="encoder")
    lines = {line.get_label(): line for line in ax.get_lines()}
    for pair in ("sst-para", "sst-sts", "para-sts"):
        rows = frame[frame["pair"] == pair].sort_values("step")
        color = mcolors.to_rgb(plot.pair_color(pair))
        line = lines[plot.pair_label(pair)]
        np.testing.assert_array_equal(line.get_xdata(), rows["step"].to_numpy(float))
        np.testing.assert_array_equal(line.get_ydata(), rows["estimate"].to_numpy())  # NaN: gap
        # undetermined windows: marked x in the pair's colour at exactly the NaN steps
        marks = [ln for ln in ax.get_lines() if ln.get_marker() == "x"
                 and mcolors.to_rgb(ln.get_color()) == color]
        assert len(marks) == 1
        np.testing.assert_array_equal(marks[0].get_xdata(),
                                      rows.loc[rows["estimate"].isna(), "step"].to_numpy(float))
        # the raw probe cosine as hollow dots in the same colour
        dots = [ln for ln in ax.get_lines() if ln.get_linestyle() == "None"
                and ln.get_marker() == "o" and mcolors.to_rgb(ln.get_markeredgecolor()) == color]
        own = raw[raw["pair"] == pair]
        np.testing.assert_allclose(dots[0].get_ydata(), own["value"].to_numpy())
        # the interval band spans [lo, hi] at every step that has one
        band = [c for c in ax.collections if len(c.get_paths())
                and tuple(c.get_facecolor()[0][:3]) == color]
        finite = rows[rows["lo"].notna()]
        if len(finite):
            for _, r in finite.iterrows():
                lo, hi = _band_at(band[0], r["step"])
                assert (lo, hi) == pytest.approx((r["lo"], r["hi"]))
    assert "pooled over 4 probes" in ax.get_title(loc="left")
    assert "undetermined" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_expected_cosine_from_a_frame_and_clear_refusals(tiny_run, synthetic_dirs):
    frame = tiny_run.expected_cosines(window=3, blocks="encoder")
    ax = plot.expected_cosine_over_training(frame, window=3, pair="sst-sts")
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "SST–STS"]
    np.testing.assert_array_equal(line.get_ydata(),
                                  frame.loc[frame["pair"] == "sst-sts", "estimate"].to_numpy())
    with pytest.raises(ValueError, match="one run"):
        plot.expected_cosine_over_training(load_runs([synthetic_dirs["sum"],
                                                      synthetic_dirs["pcgrad"]]))


def test_noise_band_on_raw_cosines_is_z_times_the_replicate_spread(tiny_run):
    spread = tiny_run.raw_cosine_spread(blocks="encoder")
    widest = spread.groupby("step")["estimate"].max()
    ax = plot.cosine_over_training(tiny_run, source="probe")
    (band,) = _grey_bands(ax)
    for step, sd in widest.items():
        assert _band_at(band, step) == pytest.approx((-Z * sd, Z * sd))
    assert "noise only (cos μ = 0)" in [t.get_text() for t in ax.get_legend().get_texts()]
    # a trailing mean over 4 probe steps averages 4 points: the band narrows by sqrt(4)
    ax = plot.cosine_over_training(tiny_run, source="probe", smooth=4, ax=plt.figure().gca())
    (band,) = _grey_bands(ax)
    step, sd = widest.index[-1], widest.iloc[-1]
    assert _band_at(band, step) == pytest.approx((-Z * sd / 2, Z * sd / 2))
    ax = plot.cosine_over_training(tiny_run, source="probe", noise_band=False,
                                   ax=plt.figure().gca())
    assert _grey_bands(ax) == []


def test_noise_band_on_conflict_rate_is_the_binomial_band(tiny_run, synthetic_dirs):
    window = 4
    for data, source in ((tiny_run, "train"), (load_run(synthetic_dirs["no-replicates"]),
                                                "probe")):
        ax = plot.conflict_rate(data, source=source, window=window, ax=plt.figure().gca())
        (band,) = _grey_bands(ax)
        steps = np.unique(data.conflicts(source=source, window=window)["step"])
        for s in steps:
            n = int(((steps > s - window) & (steps <= s)).sum())
            lo, hi = calibration.noise_only_conflict_band(n)
            assert _band_at(band, s) == pytest.approx((float(lo), float(hi)))
    ax = plot.conflict_rate(tiny_run, window=window, noise_band=False, ax=plt.figure().gca())
    assert _grey_bands(ax) == []


def test_dashboard_shows_expected_cosines_only_with_replicate_probes(tiny_run, synthetic_dirs):
    fig = plot.plot_conflicts(tiny_run, width="icml-page", expected_window=4)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert any(t.startswith("Expected cosine") for t in titles)
    assert not any("magnitude similarity" in t for t in titles)
    (ax,) = [a for a in fig.axes if a.get_title(loc="left").startswith("Expected cosine")]
    frame = tiny_run.expected_cosines(window=4, blocks="encoder")
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "PARA–STS"]
    np.testing.assert_array_equal(line.get_ydata(),
                                  frame.loc[frame["pair"] == "para-sts", "estimate"].to_numpy())
    assert plot.layout_problems(fig) == []
    for data in (load_run(synthetic_dirs["no-replicates"]),
                 load_runs([synthetic_dirs["sum"], synthetic_dirs["pcgrad"]])):
        fig = plot.plot_conflicts(data, source="probe")
        titles = [ax.get_title(loc="left") for ax in fig.axes]
        assert "Gradient magnitude similarity" in titles
        assert not any(t.startswith("Expected cosine") for t in titles)


def test_catalogue_has_the_expected_cosine_figure_only_with_replicate_probes(tiny_run,
                                                                            synthetic_dirs):
    assert "expected_cosine" in plot.run_figures(tiny_run)
    assert "expected_cosine" not in plot.run_figures(load_run(synthetic_dirs["no-replicates"]))
    for width in ("icml-column", "icml-page"):
        fig = plot.run_figures(tiny_run)["expected_cosine"](width)
        assert plot.layout_problems(fig) == []


def test_identical_methods_stay_visible(synthetic_dirs):
    runs = load_runs([synthetic_dirs["sum"], synthetic_dirs["mgda"]])  # same draws: equal
    losses = runs.losses()
    a, b = (losses[losses["method"] == m].sort_values(["task", "step"])["value"].to_numpy()
            for m in ("sum", "mgda"))
    np.testing.assert_array_equal(a, b)  # the curves coincide
    for ax in (plot.training_curves(runs, kind="loss", task="sst"),
               plot.compare(runs)[0].axes[0]):
        styles = {}
        for line in ax.get_lines():
            for method in ("sum", "mgda"):
                if mcolors.to_rgb(line.get_color()) == mcolors.to_rgb(plot.method_color(method)):
                    styles[method] = (line.get_marker(), line.get_linewidth(), line.get_zorder())
        assert styles["sum"][0] != styles["mgda"][0]  # distinct markers
        assert styles["sum"][1] > styles["mgda"][1]  # the one beneath is wider
        assert styles["sum"][2] < styles["mgda"][2]
    fig, _ = plot.compare(runs)
    markers = {h.get_label(): h.get_marker() for h in fig.legends[0].legend_handles}
    assert markers["Sum"] != markers["MGDA"]
    # the histogram of identical cosines: the same outline twice, the lower one wider
    ax = plot.cosine_distribution(runs, pair="sst-para")
    widths = {m: [(line.get_linewidth(), line.get_zorder()) for line in ax.get_lines()
                  if mcolors.to_rgb(line.get_color()) == mcolors.to_rgb(plot.method_color(m))]
              for m in ("sum", "mgda")}
    (sum_width, sum_z), (mgda_width, mgda_z) = widths["sum"][0], widths["mgda"][0]
    assert sum_width > mgda_width and sum_z < mgda_z


def test_block_names_in_figures_are_the_data_names(tiny_run):
    ax = plot.layer_heatmap(tiny_run, pair="sst-para", source="probe")
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [b for b in tiny_run.blocks if b in set(tiny_run.cosines()["block"])]


def test_noise_bands_on_the_batches_per_task_axis(tmp_path):
    # a joint and a round-robin run compared: x is batches per task, and each run's band is
    # placed at its own steps / (optimizer steps per batch of each task)
    joint = load_run(make_synthetic_run(tmp_path / "joint", method="sum", steps=30,
                                        probe_every=5))
    rr = load_run(make_synthetic_run(tmp_path / "rr", method="sum", schedule="round_robin",
                                     steps=90, probe_every=15))
    runs = Runs([joint, rr])
    ax = plot.cosine_over_training(runs, source="probe", pair="sst-para")
    assert ax.get_xlabel() == "Batches per task"
    (band,) = _grey_bands(ax)
    spreads = [r.raw_cosine_spread(blocks="encoder").query("pair == 'sst-para'")
               for r in (joint, rr)]
    at = pd.concat([spreads[0].assign(x=spreads[0]["step"]),
                    spreads[1].assign(x=spreads[1]["step"] / 3)]).groupby("x")["estimate"].max()
    assert list(at.index) == [0, 5, 10, 15, 20, 25]  # both runs probed at these points
    for x, sd in at.items():
        assert _band_at(band, x) == pytest.approx((-Z * sd, Z * sd))
    window = 30
    ax = plot.conflict_rate(runs, source="probe", pair="sst-para", window=window,
                            ax=plt.figure().gca())
    assert ax.get_xlabel() == "Batches per task"
    (band,) = _grey_bands(ax)
    rr_steps = np.unique(rr.conflicts(source="probe", window=window)["step"])
    # the round-robin run has the fewer probes in a 30-step window: its band is the widest
    n = int(((rr_steps > rr_steps[-1] - window) & (rr_steps <= rr_steps[-1])).sum())
    lo, hi = calibration.noise_only_conflict_band(n)
    assert _band_at(band, rr_steps[-1] / 3) == pytest.approx((float(lo), float(hi)))


def test_seed_bands_of_bounded_quantities_stay_within_their_bounds(tmp_path):
    # two seeds: a t band with 1 degree of freedom is 12.7 standard errors wide, past +-1
    runs = Runs([load_run(make_synthetic_run(tmp_path / f"s{seed}", method="sum", seed=seed,
                                             steps=40, probe_every=5, rng_seed=seed))
                 for seed in (0, 1)])
    ax = plot.cosine_over_training(runs, source="train", pair="sst-para", noise_band=False)
    low, high = ax.get_ylim()
    assert -1.02 <= low and high <= 1.02
    ax = plot.training_curves(runs, task="sts", metric="pearson", ax=plt.figure().gca())
    low, high = ax.get_ylim()
    assert -1.02 <= low and high <= 1.02


def test_final_metric_intervals_of_two_seeds_stay_within_the_metrics_bounds(tmp_path):
    # the compare figure's final-dev panel: two seeds far apart give a t interval (1 degree
    # of freedom) far past 0 and 1
    from gradlab.store import RunWriter

    for seed, value in ((0, 0.15), (1, 0.85)):
        with RunWriter(tmp_path / f"s{seed}", name=f"s{seed}", config={}, tasks=["sst"],
                       blocks=[("layer.0", 2)], method="sum", seed=seed,
                       schedule="joint") as writer:
            writer.log_eval(10, "dev", "sst", {"accuracy": value})
    runs = gradlab.load_runs(tmp_path)
    ax = plot.method_comparison(runs, ax=plt.figure().gca())
    low, high = ax.get_xlim()
    assert -0.01 <= low and high <= 1.01
    ax = plot.seed_points(runs, task="sst", ax=plt.figure().gca())
    low, high = ax.get_ylim()
    assert -0.01 <= low and high <= 1.01
