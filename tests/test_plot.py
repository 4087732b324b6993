"""Tests for gradlab.plot: the seaborn contract, names in legends, clear refusals, exact arrows,
export fonts and resolution, figure-level entry points and tables."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from helpers_runs import load_synthetic_vectors, make_synthetic_run  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import stats  # noqa: E402

from gradlab import plot  # noqa: E402
from gradlab.run import load_run, load_runs  # noqa: E402

PAIRS = ["SST–PARA", "SST–STS", "PARA–STS"]
TASKS = ["SST", "PARA", "STS"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot_runs")
    dirs = {}
    for method, schedule, seeds in [
        ("pcgrad", "joint", (0, 1)),
        ("sum", "joint", (0, 1)),
        ("sum", "round_robin", (0,)),
    ]:
        for seed in seeds:
            name = f"{'round_robin' if schedule == 'round_robin' else method}-s{seed}"
            dirs[name] = make_synthetic_run(
                root / name, method=method, seed=seed, schedule=schedule, steps=60
            )
    return dirs


@pytest.fixture(scope="module")
def run(run_dirs):
    return load_run(run_dirs["pcgrad-s0"])


@pytest.fixture(scope="module")
def runs(run_dirs):
    return load_runs(list(run_dirs.values()))


@pytest.fixture(scope="module")
def joint_runs(run_dirs):
    return load_runs([d for name, d in run_dirs.items() if not name.startswith("round_robin")])


def texts(ax) -> list[str]:
    """Every legend entry, title and axis label of ``ax`` (and its figure's legends)."""
    out = [ax.get_title(loc="left"), ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
    legends = [ax.get_legend(), *ax.figure.legends]
    for legend in legends:
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
            out.append(legend.get_title().get_text())
    return out


# Axes-level functions: (function, kwargs, names the legend/labels must show for one PCGrad run)
AXES_CASES = [
    (plot.training_curves, {}, TASKS),
    (plot.training_curves, {"kind": "loss", "smooth": 5}, TASKS),
    (plot.cosine_over_training, {"smooth": 5}, PAIRS),
    (plot.conflict_rate, {"window": 10}, PAIRS),
    (plot.projection_rate, {"window": 10}, ["SST→PARA", "PARA→SST"]),
    (plot.task_weights, {}, TASKS),
    (plot.layer_heatmap, {"pair": "sst-para"}, ["SST–PARA", "layer.0", "embeddings"]),
    (plot.s_conflict_bars, {"pair": "sst-para"}, ["SST–PARA", "layer.0", "embeddings"]),
    (plot.cosine_distribution, {}, PAIRS),
    (plot.cosine_distribution, {"kind": "ecdf", "pair": "sst-para"}, ["SST–PARA"]),
    (plot.gradient_norms, {}, TASKS),
    (plot.magnitude_similarity, {}, PAIRS),
    (plot.condition_number, {}, ["PCGrad"]),
    (plot.gradient_arrows, {"step": 20}, TASKS + ["Sum", "PCGrad"]),
    (plot.method_comparison, {}, TASKS + ["Overall"]),
]
IDS = [f"{fn.__name__}-{k}" for k, (fn, _, _) in enumerate(AXES_CASES)]


def _shows(ax, names):
    ticks = [t.get_text() for t in [*ax.get_xticklabels(), *ax.get_yticklabels(), *ax.texts]]
    shown = " | ".join(texts(ax) + ticks)
    missing = [n for n in names if n not in shown]
    assert not missing, f"{missing} not shown; found: {shown}"


@pytest.mark.parametrize(("fn", "kwargs", "names"), AXES_CASES, ids=IDS)
def test_axes_function_draws_on_given_axes_and_names_things(run, fn, kwargs, names):
    fig, ax = plt.subplots()
    other = fig.add_axes((0.8, 0.8, 0.1, 0.1))
    out = fn(run, ax=ax, **kwargs)
    assert out is ax
    assert ax.has_data() or ax.texts or ax.patches
    assert not other.has_data()
    _shows(ax, names)
    method_shown = "PCGrad" in " ".join(texts(ax))
    assert method_shown, "one run: the method is named in the subtitle or legend"


@pytest.mark.parametrize(("fn", "kwargs", "names"), AXES_CASES, ids=IDS)
def test_axes_function_defaults_to_current_axes(run, fn, kwargs, names):
    fig, ax = plt.subplots()
    assert fn(run, **kwargs) is ax


SEVERAL_CASES = [
    (plot.training_curves, {}),
    (plot.training_curves, {"kind": "loss", "task": "sst", "smooth": 5}),
    (plot.cosine_over_training, {"pair": "sst-para"}),
    (plot.cosine_over_training, {}),
    (plot.conflict_rate, {"pair": "sst-sts"}),
    (plot.s_conflict_bars, {"pair": "sst-para"}),
    (plot.cosine_distribution, {"kind": "ecdf"}),
    (plot.cosine_distribution, {"pair": "para-sts"}),
    (plot.gradient_norms, {}),
    (plot.magnitude_similarity, {"pair": "sst-para"}),
    (plot.condition_number, {}),
    (plot.method_comparison, {}),
    (plot.method_comparison, {"kind": "bar", "metric": {"sts": "spearman"}}),
]


@pytest.mark.parametrize(
    ("fn", "kwargs"),
    SEVERAL_CASES,
    ids=[f"{f.__name__}-{k}" for k, (f, _) in enumerate(SEVERAL_CASES)],
)
def test_axes_function_on_several_runs_names_methods(runs, fn, kwargs):
    fig, ax = plt.subplots()
    assert fn(runs, ax=ax, **kwargs) is ax
    # probe batches are the fair comparison: round-robin logs no train Gramian
    _shows(ax, ["Sum", "PCGrad", "Round-robin"])


def test_several_runs_of_pcgrad_only(joint_runs, run_dirs):
    pcgrad = load_runs([run_dirs["pcgrad-s0"], run_dirs["pcgrad-s1"]])
    ax = plot.projection_rate(pcgrad, window=10)
    _shows(ax, ["SST→PARA", "STS→PARA", "PCGrad (2 seeds)"])
    ax = plot.task_weights(joint_runs, ax=plt.figure().subplots())
    _shows(ax, ["Sum", "PCGrad", "SST"])
    ax = plot.layer_heatmap(joint_runs, method="pcgrad", ax=plt.figure().subplots())
    _shows(ax, ["PCGrad (mean of 2 seeds)"])
    ax = plot.gradient_arrows(joint_runs, run="sum-s1", step=30, ax=plt.figure().subplots())
    _shows(ax, ["sum-s1", "Sum (applied)", "PCGrad"])


def test_colours_are_the_themes(run):
    ax = plot.cosine_over_training(run)
    colors = {line.get_label(): mcolors.to_hex(line.get_color()) for line in ax.get_lines()}
    for pair, label in zip(["sst-para", "sst-sts", "para-sts"], PAIRS, strict=True):
        handle = [h for h, t in zip(*ax.get_legend_handles_labels(), strict=True) if t == label]
        assert mcolors.to_hex(handle[0].get_color()) == plot.pair_color(pair).lower()
    assert colors  # lines were drawn
    ax = plot.gradient_norms(run, ax=plt.figure().subplots())
    handles, labels = ax.get_legend_handles_labels()
    for task, label in zip(["sst", "para", "sts"], TASKS, strict=True):
        assert (
            mcolors.to_hex(handles[labels.index(label)].get_color())
            == plot.task_color(task).lower()
        )


def test_dataframe_input_matches_run_input(run):
    a = plot.cosine_over_training(run, source="probe", ax=plt.figure().subplots())
    b = plot.cosine_over_training(run.cosines(), source="probe", ax=plt.figure().subplots())
    ya = [line.get_ydata() for line in a.get_lines()]
    yb = [line.get_ydata() for line in b.get_lines()]
    assert len(ya) == len(yb)
    for u, v in zip(ya, yb, strict=True):
        np.testing.assert_allclose(u, v)


def test_layer_heatmap_orders_blocks_and_centres_colours(run):
    ax = plot.layer_heatmap(run, pair="para-sst", source="probe", cbar=False)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["embeddings", "layer.0", "layer.1"]
    mesh = ax.collections[0]
    lo, hi = mesh.get_clim()
    assert lo == pytest.approx(-hi)
    cos = run.cosines(source="probe")
    expected = cos[(cos.pair == "sst-para") & (cos.block == "layer.1")].sort_values("step")
    np.testing.assert_allclose(np.asarray(mesh.get_array())[2], expected["value"].to_numpy())


def test_layer_heatmap_bins_many_steps(run):
    ax = plot.layer_heatmap(run, source="train", max_columns=12, cbar=False)
    assert np.asarray(ax.collections[0].get_array()).shape == (3, 12)


# -- refusals --------------------------------------------------------------------------------


def test_unknown_pair_names_what_exists(run):
    with pytest.raises(ValueError, match=r"pair 'sst-foo'.*sst-para"):
        plot.cosine_over_training(run, pair="sst-foo")
    with pytest.raises(ValueError, match="sst→para"):
        plot.projection_rate(run, pair="sst->foo")


def test_step_not_logged_names_logged_steps(run):
    with pytest.raises(ValueError, match=r"step 7.*(steps logged|0)"):
        plot.gradient_arrows(run, step=7, source="probe")


def test_empty_and_missing_data_refused(run, run_dirs):
    empty = run.cosines().iloc[:0]
    with pytest.raises(ValueError, match="no rows"):
        plot.cosine_over_training(empty)
    rr = load_run(run_dirs["round_robin-s0"])
    with pytest.raises(ValueError, match=r"train.*probe|probe.*train"):
        plot.cosine_over_training(rr, source="train")
    with pytest.raises(ValueError, match="lacks columns"):
        plot.cosine_over_training(pd.DataFrame({"step": [1], "value": [0.1]}))
    with pytest.raises(TypeError, match="Run, Runs or a DataFrame"):
        plot.gradient_norms([1, 2, 3])


def test_bad_arguments_refused(run, runs):
    with pytest.raises(ValueError, match="kind must be 'dev' or 'loss'"):
        plot.training_curves(run, kind="accuracy")
    with pytest.raises(ValueError, match=r"task 'qnli'.*sst"):
        plot.training_curves(run, task="qnli")
    with pytest.raises(ValueError, match=r"metric 'f1'.*'sst'.*accuracy"):
        plot.training_curves(run, metric="f1")
    with pytest.raises(ValueError, match=r"source must be"):
        plot.cosine_over_training(run, source="dev")
    with pytest.raises(ValueError, match=r"layer.9.*layer.0"):
        plot.cosine_over_training(run, block="layer.9")
    with pytest.raises(ValueError, match=r"one method.*pass method="):
        plot.layer_heatmap(runs)
    with pytest.raises(ValueError, match=r"one pair; pass pair="):
        plot.s_conflict_bars(runs)
    with pytest.raises(ValueError, match=r"legend must be"):
        plot.gradient_norms(run, legend="top")
    with pytest.raises(ValueError, match=r"one run; pass run=.*pcgrad-s0"):
        plot.gradient_arrows(runs, step=0, source="probe")
    with pytest.raises(ValueError, match=r"unknown method 'pcgard'"):
        plot.gradient_arrows(run, step=0, methods=("pcgard",))
    with pytest.raises(ValueError, match="blockwise|each block"):
        plot.gradient_arrows(run, step=0, methods=("pcgrad_layerwise",))
    with pytest.raises(ValueError, match="basis must be"):
        plot.gradient_arrows(run, step=0, basis="svd")


# -- the arrow diagram is exact ----------------------------------------------------------------


def _explicit_pair_projection(J, V, i, j):
    """Coordinates of the rows of V in the Gram-Schmidt basis of (J[i], J[j]), by hand."""
    e1 = J[i] / np.linalg.norm(J[i])
    r = J[j] - (J[j] @ e1) * e1
    e2 = r / np.linalg.norm(r)
    xy = np.stack([V @ e1, V @ e2], axis=1)
    outside = np.sqrt(np.maximum((V**2).sum(1) - (xy**2).sum(1), 0)) / np.linalg.norm(V, axis=1)
    return xy, outside


def _arrow_tips(ax) -> dict[str, tuple[float, float]]:
    return {a.get_gid().split(":", 1)[1]: a.xy for a in ax.texts
            if (a.get_gid() or "").startswith("gradlab-arrow:")}  # fmt: skip


@pytest.mark.parametrize("pair", [("sst", "para"), ("para", "sts"), ("sts", "sst")])
def test_arrows_equal_explicit_projection_of_raw_vectors(pair):
    rng = np.random.default_rng(3)
    tasks = ["sst", "para", "sts"]
    J = rng.normal(size=(3, 40))
    J[0] -= 0.8 * J[1]  # make SST and PARA conflict
    G = J @ J.T
    ax = plot.gradient_arrows(G, tasks=tasks, pair=pair, methods=("sum", "mean", "pcgrad", "mgda"))
    coords = plot.arrow_coordinates(
        G, tasks=tasks, pair=pair, methods=("sum", "mean", "pcgrad", "mgda")
    )
    W = np.array(coords["weights"].tolist())
    np.testing.assert_allclose(W[:3], np.eye(3))
    np.testing.assert_allclose(W[3], np.ones(3))
    xy, outside = _explicit_pair_projection(J, W @ J, tasks.index(pair[0]), tasks.index(pair[1]))
    np.testing.assert_allclose(coords[["x", "y"]].to_numpy(), xy, atol=1e-10)
    np.testing.assert_allclose(coords["outside"].to_numpy(), outside, atol=1e-7)
    tips = _arrow_tips(ax)
    for row, expected in zip(coords.itertuples(), xy, strict=True):
        np.testing.assert_allclose(tips[f"{row.kind}:{row.name}"], expected, atol=1e-10)
    assert ax.get_aspect() == 1.0
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "outside the plane" in ax.get_legend().get_title().get_text()
    for task in pair:  # the two gradients spanning the plane lie in it
        assert f"{plot.task_label(task)}: 0%" in legend


def test_arrows_pca_basis_equals_top_singular_vectors():
    rng = np.random.default_rng(4)
    J = rng.normal(size=(3, 30))
    coords = plot.arrow_coordinates(J @ J.T, tasks=["sst", "para", "sts"], basis="pca")
    W = np.array(coords["weights"].tolist())
    V = W @ J
    _, _, Vt = np.linalg.svd(J, full_matrices=False)
    xy = V @ Vt[:2].T
    got = coords[["x", "y"]].to_numpy()
    signs = np.sign(np.sum(got * xy, axis=0))  # singular vectors are defined up to sign
    np.testing.assert_allclose(got, xy * signs, atol=1e-9)
    rest = np.sqrt(np.maximum((V**2).sum(1) - (xy**2).sum(1), 0)) / np.linalg.norm(V, axis=1)
    np.testing.assert_allclose(coords["outside"], rest, atol=1e-6)


def test_arrows_from_a_run_equal_its_raw_gradients(run, run_dirs):
    vectors = load_synthetic_vectors(run_dirs["pcgrad-s0"])
    J = np.concatenate([vectors[("train", 20, b)] for b in run.blocks], axis=1)
    ax = plot.gradient_arrows(run, step=20, pair="sst-sts", methods=("sum", "mean"))
    coords = plot.arrow_coordinates(run, step=20, pair="sst-sts", methods=("sum", "mean"))
    applied = coords[coords["label"] == "PCGrad (applied)"]
    assert len(applied) == 1
    w = run.weights()
    w = w[(w.step == 20) & (w.block == "")].set_index("task").loc[run.tasks, "value"]
    np.testing.assert_allclose(applied["weights"].iloc[0], w.to_numpy())
    W = np.array(coords["weights"].tolist())
    xy, outside = _explicit_pair_projection(J, W @ J, 0, 2)
    np.testing.assert_allclose(coords[["x", "y"]].to_numpy(), xy, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(coords["outside"].to_numpy(), outside, atol=1e-6)
    tips = _arrow_tips(ax)
    np.testing.assert_allclose(tips["update:pcgrad"], xy[-1], rtol=1e-9)


def test_arrows_default_to_last_logged_step_and_probe_for_round_robin(run_dirs):
    rr = load_run(run_dirs["round_robin-s0"])
    coords = plot.arrow_coordinates(rr, source="probe")
    assert coords.attrs["step"] == 50
    assert "Round-robin (applied)" not in set(coords["label"])  # probe: nothing applied


# -- comparison numbers --------------------------------------------------------------------


def test_training_curves_line_up_schedules_by_batches_per_task(runs, joint_runs, run_dirs):
    ax = plot.training_curves(runs, task="sst")  # joint and round-robin together
    assert ax.get_xlabel() == "Batches per task"
    xs = np.concatenate([line.get_xdata() for line in ax.get_lines()])
    rr_steps = load_run(run_dirs["round_robin-s0"]).evals()
    rr_steps = rr_steps.loc[rr_steps.task == "sst", "step"].to_numpy(float)
    assert np.isin(rr_steps / 3, xs).all()  # T = 3 tasks: one batch each per 3 steps
    joint_steps = load_run(run_dirs["sum-s0"]).evals()["step"].to_numpy(float)
    assert np.isin(joint_steps, xs).all()
    assert plot.training_curves(joint_runs, task="sst").get_xlabel() == "Step"
    assert plot.training_curves(runs, task="sst", x="step").get_xlabel() == "Step"
    with pytest.raises(ValueError, match="x must be"):
        plot.training_curves(runs, x="epochs")
    for draw in (plot.cosine_over_training, plot.conflict_rate):  # probe steps likewise
        ax = draw(runs, pair="sst-para", source="probe")
        assert ax.get_xlabel() == "Batches per task"
        assert ax.get_title(loc="left").startswith("SST–PARA · ")  # the one pair, named
        xs = np.concatenate([line.get_xdata() for line in ax.get_lines()])
        rr_probe = load_run(run_dirs["round_robin-s0"]).cosines(source="probe")
        assert np.isin(rr_probe["step"].unique() / 3, xs).all()
        assert draw(joint_runs, pair="sst-para", source="probe").get_xlabel() == "Step"
    plt.close("all")


def test_compare_shows_seed_points_when_runs_are_evaluated_only_at_the_end(tmp_path):
    dirs = [make_synthetic_run(tmp_path / f"{m}-s{seed}", method=m, seed=seed, steps=20)
            for m in ("sum", "pcgrad") for seed in (0, 1, 2)]  # one eval each, at step 19
    runs = load_runs(dirs)
    fig, table = plot.compare(runs)
    sst = next(ax for ax in fig.axes if ax.get_title(loc="left") == "SST")
    assert [t.get_text() for t in sst.get_xticklabels()] == ["Sum", "PCGrad"]
    dots = np.concatenate([c.get_offsets()[:, 1] for c in sst.collections
                           if len(c.get_offsets()) == 3])  # the seeds' dots, per method
    per_run = plot.final_metrics(runs, task="sst")
    np.testing.assert_allclose(np.sort(dots), np.sort(per_run["value"].to_numpy()))
    row = table[(table.method == "pcgrad") & (table.task == "sst")].iloc[0]
    means = [line.get_ydata()[0] for line in sst.get_lines() if len(line.get_ydata()) == 1]
    assert np.isclose(means, row["mean"]).any()
    ax = plot.seed_points(runs, task="sts")
    assert ax.get_ylabel() == "Pearson r" and "seeds and mean" in ax.get_title(loc="left")
    with pytest.raises(ValueError, match="task 'cola'"):
        plot.seed_points(runs, task="cola")
    plt.close("all")


def test_method_comparison_error_bars_are_the_table_intervals(runs):
    ax = plot.method_comparison(runs)
    table = plot.comparison_table(runs)
    ys = np.concatenate([line.get_xdata() for line in ax.get_lines() if len(line.get_xdata())])
    for row in table[table["n"] > 1].itertuples():
        assert np.isclose(ys, row.ci_low).any() and np.isclose(ys, row.ci_high).any()
    per_run = plot.final_metrics(runs)
    sst_sum = per_run[(per_run.variant == "sum") & (per_run.task == "sst")]["value"]
    row = table[(table.method == "sum") & (table.task == "sst")].iloc[0]
    assert row["mean"] == pytest.approx(sst_sum.mean())
    assert row["n"] == 2
    half = (row.ci_high - row.ci_low) / 2
    assert half == pytest.approx(12.706205 * sst_sum.std(ddof=1) / np.sqrt(2), rel=1e-5)


def test_comparison_table_pairs_methods_with_the_baseline_by_seed(runs):
    table = plot.comparison_table(runs)
    per_run = plot.final_metrics(runs)
    for task in ("sst", "overall"):
        values = per_run[per_run.task == task].set_index(["variant", "seed"])["value"]
        d = np.array([values["pcgrad", s] - values["sum", s] for s in (0, 1)])
        row = table[(table.method == "pcgrad") & (table.task == task)].iloc[0]
        assert row["baseline"] == "sum" and row["n_pairs"] == 2
        assert row["diff"] == pytest.approx(d.mean())
        half = 12.706205 * d.std(ddof=1) / np.sqrt(2)  # t(0.975, 1 dof)
        assert (row.diff_ci_low, row.diff_ci_high) == pytest.approx((d.mean() - half,
                                                                    d.mean() + half), rel=1e-5)
        t = d.mean() / (d.std(ddof=1) / np.sqrt(2))
        assert row["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), 1), rel=1e-6)
        assert row["within_seed_noise"] == (row.diff_ci_low <= 0 <= row.diff_ci_high)
        rr = table[(table.method == "round_robin") & (table.task == task)].iloc[0]
        assert rr["n_pairs"] == 1 and pd.isna(rr["within_seed_noise"])  # one pair: no interval
        assert rr["diff"] == pytest.approx(values["round_robin", 0] - values["sum", 0])
    base = table[table.method == "sum"]
    assert (base["diff"] == 0).all() and base["within_seed_noise"].isna().all()
    assert "diff" not in plot.comparison_table(runs, baseline=None).columns
    other = plot.comparison_table(runs, baseline="pcgrad")
    assert set(other["baseline"]) == {"pcgrad"}


def test_comparison_table_warns_when_runs_cannot_be_paired(run_dirs, tmp_path):
    twin = make_synthetic_run(tmp_path / "pcgrad-s0-again", method="pcgrad", seed=0, steps=60)
    runs = load_runs([run_dirs["pcgrad-s0"], run_dirs["sum-s0"], twin])
    with pytest.warns(UserWarning, match="pcgrad-s0-again"):
        table = plot.comparison_table(runs)
    assert table["diff"].isna().all() and table["within_seed_noise"].isna().all()
    assert table.loc[table.method == "pcgrad", "n"].iloc[0] == 2  # the summary is still there


def test_comparison_table_and_exports(runs, tmp_path):
    table = plot.comparison_table(runs)
    assert list(table["method"].unique()) == ["sum", "round_robin", "pcgrad"]
    assert set(table["task"]) == {"sst", "para", "sts", "overall"}
    assert set(table.loc[table.task == "sts", "metric"]) == {"pearson"}
    latex = plot.table_to_latex(table, tmp_path / "t.tex", label="tab:cmp")
    assert (tmp_path / "t.tex").read_text() == latex
    for needed in [r"\toprule", "Round-robin", "PCGrad", "SST (Accuracy)", r"\textbf{",
                   r"$\pm$", r"\label{tab:cmp}", "95\\%"]:  # fmt: skip
        assert needed in latex
    path = plot.table_to_csv(table, tmp_path / "t.csv")
    expected = table.assign(within_seed_noise=table["within_seed_noise"].astype(object)
                            .where(table["within_seed_noise"].notna(), np.nan))
    pd.testing.assert_frame_equal(pd.read_csv(path), expected, check_dtype=False)
    with pytest.raises(ValueError, match="missing columns"):
        plot.table_to_latex(pd.DataFrame({"a": [1]}))


# -- figure-level ------------------------------------------------------------------------------


def test_plot_conflicts_one_run(run):
    fig = plot.plot_conflicts(run)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert "PCGrad projection rate (10-step window)" not in titles
    assert any(t.startswith("PCGrad projection rate") for t in titles)
    assert any("cosine per layer" in t for t in titles)
    assert "pcgrad-s0" in fig._suptitle.get_text()


def test_plot_conflicts_several_runs_and_sum_run(runs, run_dirs):
    fig = plot.plot_conflicts(runs, pair="sst-para")
    assert "5 runs" in fig._suptitle.get_text()
    assert "probe" in fig._suptitle.get_text()
    fig = plot.plot_conflicts(load_run(run_dirs["sum-s0"]))
    s_panel = [ax for ax in fig.axes if ax.get_title(loc="left").startswith("S-conflict")]
    assert len(s_panel) == 1 and "S = 0" in s_panel[0].get_title(loc="left")  # states S
    assert s_panel[0].get_xlabel() == "Share of steps"
    with pytest.raises(TypeError, match="Run or Runs"):
        plot.plot_conflicts(load_run(run_dirs["sum-s0"]).cosines())


def test_compare_returns_figure_and_table(runs):
    fig, table = plot.compare(runs)
    assert isinstance(table, pd.DataFrame) and len(table) == 12
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "Sum" in legend and "PCGrad" in legend and "Round-robin" in legend
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_visible()]
    assert titles[:3] == ["SST: Accuracy", "PARA: Accuracy", "STS: Pearson r"]  # task and metric
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)


# -- theme and export ------------------------------------------------------------------------


def test_theme_colours_and_labels():
    colours = [plot.task_color(t) for t in ("sst", "para", "sts")]
    colours += [plot.pair_color(p) for p in ("sst-para", "sst-sts", "para-sts")]
    assert len(set(colours)) == 6  # no colour means both a task and a pair
    assert plot.pair_color("para-sst") == plot.pair_color("sst-para")
    assert plot.pair_color("sst→para") == plot.pair_color("sst-para")
    assert plot.method_color("my_method") == plot.method_color("my_method")
    assert plot.method_color("pcgrad (round_robin)") == plot.method_color("pcgrad")
    assert plot.pair_label("sst-para") == "SST–PARA"
    assert plot.pair_label("sts→para") == "STS→PARA"
    assert plot.method_label("round_robin") == "Round-robin"
    # one block naming in frames and figures: the data's own names
    for block in ("embeddings", "layer.0", "layer.11", "pooler", "encoder"):
        assert plot.block_label(block) == block
    with plot.theme_context():
        assert matplotlib.rcParams["pdf.fonttype"] == 42
        assert matplotlib.rcParams["font.size"] < 10  # paper context


def _figure():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1], label="SST–PARA")
    ax.set(xlabel="Step", ylabel="Cosine similarity ρ")
    ax.legend()
    return fig


def test_export_pdf_embeds_truetype_fonts(tmp_path):
    with matplotlib.rc_context({"pdf.fonttype": 3}):  # even against a Type 3 setting
        (path,) = plot.export(_figure(), tmp_path / "fig.pdf", width="acl-column")
    data = path.read_bytes()
    assert b"/FontFile2" in data or b"/Subtype /TrueType" in data
    assert b"/Type3" not in data and b"/Subtype /Type3" not in data


def test_export_png_dpi_and_width_presets(tmp_path):
    paths = plot.export(_figure(), tmp_path / "fig", width="icml-column")
    assert [p.suffix for p in paths] == [".pdf", ".png"]
    with Image.open(paths[1]) as im:
        assert min(im.info["dpi"]) >= 299.5
        assert im.width == pytest.approx(3.25 * 300, abs=2)
    fig = _figure()
    plot.export(fig, tmp_path / "page.png", width="acl-page", height=2.5)
    with Image.open(tmp_path / "page.png") as im:
        assert im.size == pytest.approx((16 / 2.54 * 300, 2.5 * 300), abs=2)
    (svg,) = plot.export(_figure(), tmp_path / "fig.svg", width=5.5)
    assert svg.read_text().lstrip().startswith("<?xml")
    for width, inches in [("neurips", 5.5), ("icml-page", 6.75), ("acl-column", 7.7 / 2.54)]:
        assert plot.WIDTHS[width] == pytest.approx(inches)


def test_export_refuses_bad_arguments(tmp_path):
    fig = _figure()
    with pytest.raises(ValueError, match=r"unknown width preset 'acl'.*acl-column"):
        plot.export(fig, tmp_path / "f.pdf", width="acl")
    with pytest.raises(ValueError, match="at least 300"):
        plot.export(fig, tmp_path / "f.png", dpi=150)
    with pytest.raises(ValueError, match=r"formats.*allowed"):
        plot.export(fig, tmp_path / "f", formats=("jpg",))
    with pytest.raises(ValueError, match="width must be"):
        plot.export(fig, tmp_path / "f.pdf", width=-1)


def test_arrow_legend_survives_a_plain_save_and_labels_avoid_other_arrows(run, tmp_path):
    with matplotlib.rc_context({"savefig.bbox": None}):  # no tight box, no layout engine
        fig, ax = plt.subplots()
        plot.gradient_arrows(run, source="probe", ax=ax)
        fig.savefig(tmp_path / "plain.png")
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend()
    assert legend is not None and "outside the plane" in legend.get_title().get_text()
    inside = ax.get_window_extent(renderer)
    box = legend.get_window_extent(renderer)
    assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0
    assert "principal plane" in ax.get_title(loc="left")  # the default plane, named
    tips = {k.split(":", 1)[1]: np.array(v) for k, v in _arrow_tips(ax).items()}
    to_data = ax.transData.inverted()
    for label in [t for t in ax.texts if str(t.get_gid()).startswith("gradlab-label:")]:
        (x0, y0), (x1, y1) = to_data.transform(label.get_window_extent(renderer))
        name = label.get_gid().split(":", 1)[1]
        for other, tip in tips.items():  # no other arrow's shaft passes through the label
            if other == name:
                continue
            shaft = np.linspace(0, 1, 200)[:, None] * tip
            hits = ((shaft[:, 0] > x0) & (shaft[:, 0] < x1) & (shaft[:, 1] > y0)
                    & (shaft[:, 1] < y1))  # fmt: skip
            assert not hits.any(), (name, other)


def test_replay_gives_registry_weights_and_refuses_blockwise_methods():
    import doctest

    from gradlab import replay

    assert doctest.testmod(replay).failed == 0
    G = np.array([[1.0, -0.5], [-0.5, 2.0]])
    np.testing.assert_allclose(replay.method_weights("mean", G), [0.5, 0.5])
    with pytest.raises(ValueError, match="unknown method"):
        replay.method_weights("nope", G)
    with pytest.raises(ValueError, match="separately"):
        replay.method_weights("pcgrad_layerwise", G)
