"""gradlab.run: every accessor's columns, values against brute force from the vectors that
built the run, live reading and status, and error messages (several runs: test_runs.py)."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest
from helpers_runs import load_synthetic_vectors, make_synthetic_run

from gradlab.run import IDENTITY, NoGradientDataError, Run, load_run
from gradlab.store import RunWriter, StoreError

BLOCKS = ["embeddings", "layer.0", "layer.1"]
TASKS = ["sst", "para", "sts"]
PAIRS = ["sst-para", "sst-sts", "para-sts"]
DOCUMENTED = {  # the spec's columns after the identity columns
    "cosines": ["source", "step", "block", "pair", "task_a", "task_b", "value"],
    "norms": ["source", "step", "block", "task", "value"],
    "conflicts": ["source", "step", "block", "pair", "task_a", "task_b", "conflict",
                  "conflict_rate"],
    "magnitude_similarity": ["source", "step", "block", "pair", "task_a", "task_b", "value"],
    "curvature_measure": ["source", "step", "block", "pair", "task_a", "task_b", "value"],
    "condition_number": ["source", "step", "block", "value"],
    "s_conflict": ["source", "block", "pair", "count", "steps", "share"],
    "projections": ["step", "block", "pair", "task_i", "task_j", "coefficient", "cosine"],
    "projection_rate": ["step", "pair", "task_i", "task_j", "projected", "rate"],
    "weights": ["source", "step", "block", "task", "value"],
    "update_stats": ["step", "metric", "task", "value"],
    "losses": ["step", "task", "value"],
    "scalars": ["step", "name", "task", "value"],
    "evals": ["step", "split", "task", "metric", "value"],
    "counterfactuals": ["step", "counterfactual", "task", "weight", "predicted_delta",
                        "measured_delta"],
    "expected_cosines": ["step", "first_step", "block", "pair", "task_a", "task_b",
                         "estimate", "lo", "hi", "n", "level", "units", "reason"],
    "raw_cosine_spread": ["step", "first_step", "block", "pair", "task_a", "task_b",
                          "estimate", "lo", "hi", "n", "level", "units", "reason"],
    "within_task_cosines": ["step", "first_step", "block", "task", "estimate", "lo", "hi", "n",
                            "level", "units", "reason"],
    "noise_scale": ["step", "first_step", "block", "task", "estimate", "lo", "hi", "n",
                    "level", "units", "reason"],
}


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    make_synthetic_run(root / "pcgrad-s0", method="pcgrad", seed=0)
    make_synthetic_run(root / "layerwise-s1", method="pcgrad_layerwise", seed=1)
    make_synthetic_run(root / "rr-s2", method="sum", schedule="round_robin", seed=2)
    return root


@pytest.fixture(scope="module")
def run(runs_root) -> Run:
    return load_run(runs_root / "pcgrad-s0")


@pytest.fixture(scope="module")
def vectors(runs_root):
    """{name: {(source, step, block): J [T, P]}}, 'encoder' = the blocks side by side."""
    out = {}
    for name in ("pcgrad-s0", "layerwise-s1", "rr-s2"):
        v = load_synthetic_vectors(runs_root / name)
        for source, step in {(s, t) for s, t, _ in list(v)}:
            v[(source, step, "encoder")] = np.hstack([v[(source, step, b)] for b in BLOCKS])
        out[name] = v
    return out


def cos(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def expected_pairs(vecs, f):
    rows = {}
    for (source, step, block), J in vecs.items():
        for i in range(3):
            for j in range(i + 1, 3):
                rows[(source, step, block, f"{TASKS[i]}-{TASKS[j]}")] = f(J[i], J[j])
    return pd.Series(rows)


def check_against(df, expected, column="value", keys=("source", "step", "block", "pair"),
                  **tol):
    got = df.set_index(list(keys))[column].sort_index()
    expected = expected.sort_index()
    assert len(got) == len(expected)
    assert list(got.index) == list(expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), **tol)


def test_module_docstring_example_runs():
    import gradlab.run

    assert doctest.testmod(gradlab.run).failed == 0


# -- columns -----------------------------------------------------------------------------------


@pytest.mark.parametrize("accessor", sorted(DOCUMENTED))
def test_every_accessor_returns_the_documented_columns(run, accessor):
    df = getattr(run, accessor)()
    assert list(df.columns) == [*IDENTITY, *DOCUMENTED[accessor]]
    assert len(df) > 0
    assert (df["run"] == "pcgrad-s0").all() and (df["method"] == "pcgrad").all()
    assert (df["seed"] == 0).all() and (df["schedule"] == "joint").all()


def test_attributes_and_repr(run, runs_root):
    assert run.name == "pcgrad-s0" and run.path == runs_root / "pcgrad-s0"
    assert run.tasks == TASKS and run.blocks == BLOCKS
    assert run.block_numel == {"embeddings": 24, "layer.0": 32, "layer.1": 40}
    assert run.method == "pcgrad" and run.seed == 0 and run.schedule == "joint"
    assert run.config["steps"] == 60 and run.status == "finished"
    assert repr(run) == ("Run(name='pcgrad-s0', method='pcgrad', seed=0, schedule='joint', "
                         "steps_logged=60, last_step=59, status='finished')")
    assert load_run(runs_root / "pcgrad-s0" / "run.sqlite").name == "pcgrad-s0"


# -- values against brute force ------------------------------------------------------------------


def test_cosines_norms_and_pair_statistics_match_brute_force(run, vectors):
    v = vectors["pcgrad-s0"]
    cosines = run.cosines()
    assert set(cosines["source"]) == {"train", "probe"}
    assert set(cosines["block"]) == {*BLOCKS, "encoder"}
    assert list(cosines["pair"][:3]) == PAIRS
    check_against(cosines, expected_pairs(v, cos), atol=1e-12)

    norms = {(s, t, b, task): np.linalg.norm(J[k])
             for (s, t, b), J in v.items() for k, task in enumerate(TASKS)}
    check_against(run.norms(), pd.Series(norms), keys=("source", "step", "block", "task"),
                  rtol=1e-12)

    def gms(a, b):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return 2 * na * nb / (na**2 + nb**2)

    check_against(run.magnitude_similarity(), expected_pairs(v, gms), rtol=1e-12)

    def curvature(a, b):
        return (1 - cos(a, b) ** 2) * np.sum((a - b) ** 2) / np.sum((a + b) ** 2)

    check_against(run.curvature_measure(), expected_pairs(v, curvature), rtol=1e-9)

    kappa = {}
    for key, J in v.items():
        s = np.linalg.svd(J, compute_uv=False)
        kappa[key] = s[0] / s[-1]
    check_against(run.condition_number(), pd.Series(kappa), keys=("source", "step", "block"),
                  rtol=1e-8)


def test_conflicts_and_rates_match_brute_force(run, vectors):
    window = 25
    df = run.conflicts(window=window)
    conflict = expected_pairs(vectors["pcgrad-s0"], lambda a, b: float(cos(a, b) < 0))
    check_against(df, conflict, column="conflict")
    assert 0 < df["conflict"].mean() < 1  # the synthetic run has both
    for _, part in df.groupby(["source", "block", "pair"]):
        steps, values = part["step"].to_numpy(), part["conflict"].to_numpy()
        brute = [values[(steps > s - window) & (steps <= s)].mean() for s in steps]
        np.testing.assert_allclose(part["conflict_rate"], brute)
    # probe steps every 10: a 25-step window holds the last 3 probes
    probe = df[(df["source"] == "probe") & (df["block"] == "encoder") & (df["pair"] == "sst-para")]
    assert list(probe["step"]) == [0, 10, 20, 30, 40, 50]
    x = probe["conflict"].to_numpy()
    assert probe["conflict_rate"].iloc[-1] == pytest.approx(x[-3:].mean())


def test_sst_conflicts_and_para_sts_agree(run):
    rates = run.conflicts(source="train", blocks="layer.1").groupby("pair")["conflict"].mean()
    assert rates["sst-para"] > 0.5 and rates["sst-sts"] > 0.5 and rates["para-sts"] < 0.2


def test_s_conflict_matches_brute_force(run, vectors):
    v = vectors["pcgrad-s0"]
    for S in (0.0, -0.3):
        df = run.s_conflict(S=S, source="probe")
        assert set(df["source"]) == {"probe"} and len(df) == 4 * 3
        for row in df.itertuples():
            i, j = (TASKS.index(t) for t in row.pair.split("-"))
            cosines = [cos(J[i], J[j]) for (s, _, b), J in v.items()
                       if s == "probe" and b == row.block]
            assert row.count == sum(c < S for c in cosines)
            assert row.steps == len(cosines) == 6
            assert row.share == pytest.approx(row.count / 6)


def test_update_stats_match_brute_force(runs_root, vectors):
    for name in ("pcgrad-s0", "layerwise-s1"):
        run = load_run(runs_root / name)
        v = vectors[name]
        weights = run.weights()
        df = run.update_stats().set_index(["step", "metric", "task"])["value"]
        assert len(df) == 60 * (1 + 3 + 1)
        for step in (0, 17, 59):
            w = weights[weights["step"] == step]
            if name == "layerwise-s1":
                assert set(w["block"]) == set(BLOCKS)
                d = np.concatenate([
                    w[w["block"] == b]["value"].to_numpy() @ v[("train", step, b)]
                    for b in BLOCKS])
            else:
                assert set(w["block"]) == {""}
                d = w["value"].to_numpy() @ v[("train", step, "encoder")]
            J = v[("train", step, "encoder")]
            assert df[(step, "update_norm", "")] == pytest.approx(np.linalg.norm(d), rel=1e-10)
            for k, task in enumerate(TASKS):
                assert df[(step, "cos_update_task", task)] == pytest.approx(cos(d, J[k]),
                                                                            abs=1e-10)
            assert df[(step, "cos_update_mean", "")] == pytest.approx(cos(d, J.mean(0)),
                                                                      abs=1e-10)
        # the logged update_norm scalar (computed by the helper) agrees
        logged = run.scalars("update_norm").set_index("step")["value"]
        derived = df.xs("update_norm", level="metric").droplevel("task")
        np.testing.assert_allclose(derived.to_numpy(), logged.loc[derived.index].to_numpy(),
                                   rtol=1e-10)


def test_projections_and_projection_rate(runs_root):
    run = load_run(runs_root / "pcgrad-s0")
    events = run.projections()
    assert set(events["block"]) == {""}
    assert (events["pair"] == events["task_i"] + "→" + events["task_j"]).all()
    assert (events["coefficient"] < 0).all() and (events["cosine"] < 0).all()
    assert "sst→para" in set(events["pair"])
    rate = run.projection_rate(window=10)
    assert len(rate) == 60 * 6  # every train step, every ordered pair
    assert list(rate["pair"][:6]) == ["sst→para", "sst→sts", "para→sst", "para→sts",
                                      "sts→sst", "sts→para"]
    happened = set(zip(events["step"], events["pair"], strict=True))
    expected = [float((s, p) in happened) for s, p in zip(rate["step"], rate["pair"],
                                                          strict=True)]
    np.testing.assert_array_equal(rate["projected"], expected)
    part = rate[rate["pair"] == "sst→para"]
    x = part["projected"].to_numpy()
    np.testing.assert_allclose(part["rate"], [x[max(0, k - 9):k + 1].mean()
                                              for k in range(len(x))])

    layerwise = load_run(runs_root / "layerwise-s1")
    assert set(layerwise.projections()["block"]) <= set(BLOCKS)
    rr = load_run(runs_root / "rr-s2")
    assert len(rr.projections()) == 0 and len(rr.projection_rate()) == 0  # one task a step


def test_weights_losses_scalars_evals_counterfactuals(run):
    weights = run.weights()
    assert len(weights) == 60 * 3 and set(weights["source"]) == {"train"}
    losses = run.losses()
    assert len(losses) == 60 * 3 and list(losses["task"][:3]) == TASKS
    by_task = losses.groupby("task")["value"]
    assert by_task.first()["sst"] > by_task.last()["sst"]
    assert set(run.scalars()["name"]) == {"loss", "lr", "update_norm", "step_time", "clip_coef",
                                          "skipped"}
    assert len(run.scalars("lr")) == 60
    evals = run.evals()
    assert sorted(set(evals["step"])) == [19, 39, 59]
    assert set(evals["task"]) == {*TASKS, "overall"}
    overall = evals[evals["task"] == "overall"].set_index(["step", "metric"])["value"]
    primary = evals[evals["metric"].isin(["accuracy", "pearson"])
                    & (evals["task"] != "overall")]
    np.testing.assert_allclose(overall.xs("mean", level="metric"),
                               primary.groupby("step")["value"].mean())
    assert len(run.evals(split=None)) == len(evals)
    cf = run.counterfactuals()
    assert set(cf["counterfactual"]) == {"sum", "mean", "pcgrad"}
    assert cf[cf["step"] > 0]["measured_delta"].isna().all()
    assert cf[cf["step"] == 0]["measured_delta"].notna().all()


def test_counterfactual_predictions_match_gramian(run, vectors):
    cf = run.counterfactuals()
    lr = run.scalars("lr").set_index("step")["value"]
    for step in (0, 30):
        J = vectors["pcgrad-s0"][("probe", step, "encoder")]
        part = cf[(cf["step"] == step) & (cf["counterfactual"] == "mean")]
        d = part["weight"].to_numpy() @ J
        np.testing.assert_allclose(part["predicted_delta"], -lr[step] * (J @ d), rtol=1e-10)


def test_gramian_and_gramian_series(run, vectors):
    tasks, G = run.gramian(10, source="probe", block="layer.0")
    J = vectors["pcgrad-s0"][("probe", 10, "layer.0")]
    assert tasks == TASKS
    np.testing.assert_allclose(G, J @ J.T, rtol=1e-12)
    steps, tasks, series = run.gramian_series("probe", "encoder")
    assert list(steps) == [0, 10, 20, 30, 40, 50] and series.shape == (6, 3, 3)
    J = vectors["pcgrad-s0"][("probe", 50, "encoder")]
    np.testing.assert_allclose(series[-1], J @ J.T, rtol=1e-12)


def test_to_parquet(run, tmp_path):
    out = run.to_parquet(tmp_path / "pq")
    assert sorted(p.stem for p in out.iterdir()) == sorted(DOCUMENTED)
    back = pd.read_parquet(out / "cosines.parquet")
    pd.testing.assert_frame_equal(back, run.cosines(), check_dtype=False)


# -- errors --------------------------------------------------------------------------------------


def test_error_messages_name_the_value_and_what_exists(run, runs_root, tmp_path):
    with pytest.raises(ValueError, match=r"unknown block\(s\) \['layer.9'\] .*'embeddings'"):
        run.cosines(blocks="layer.9")
    with pytest.raises(ValueError, match=r"unknown source 'dev'; sources are \['train', 'probe'\]"):
        run.norms(source="dev")
    rr = load_run(runs_root / "rr-s2")
    with pytest.raises(NoGradientDataError,
                       match=r"never logs 'train' Gramians: schedule=round_robin .*schedule=joint"):
        rr.cosines(source="train")
    with pytest.raises(ValueError, match=r"no 'probe' Gramian of block 'layer.0' at step 3; "
                                         r"steps logged: \[0, 10, 20, 30, 40, 50\]"):
        run.gramian(3, source="probe", block="layer.0")
    with pytest.raises(ValueError, match=r"60 steps \[0, 1, 2, 3, 4, \.\.\., 57, 58, 59\]"):
        run.gramian(99)
    with pytest.raises(ValueError, match=r"no split 'test'; splits logged: \['dev'\]"):
        run.evals(split="test")
    with pytest.raises(ValueError, match=r"no scalar 'nope'; scalars logged: \['clip_coef'"):
        run.scalars("nope")
    with pytest.raises(ValueError, match="window"):
        run.conflicts(window=0)
    with pytest.raises(ValueError, match="S must be"):
        run.s_conflict(S=-2)
    with pytest.raises(StoreError, match="no run store at .*missing"):
        load_run(tmp_path / "missing")


# -- live reading and edge cases ------------------------------------------------------------------


def writer(run_dir, tasks=TASKS, blocks=(("layer.0", 4), ("layer.1", 4)), **kwargs):
    return RunWriter(run_dir, name=run_dir.name, config={}, tasks=list(tasks), blocks=list(blocks),
                     method="sum", seed=0, schedule="joint", **kwargs)


def test_accessors_reread_the_store(tmp_path):
    w = writer(tmp_path / "live", commit_every=1000, commit_seconds=1e9)
    run = load_run(tmp_path / "live")
    assert run.status == "running" and len(run.losses()) == 0 and len(run.cosines()) == 0
    assert list(run.cosines().columns) == [*IDENTITY, *DOCUMENTED["cosines"]]
    G = np.stack([np.eye(3), np.eye(3)])
    for step in range(3):
        w.log_scalars(step, {"loss": 1.0}, task="sst")
        w.log_gramians(step, "train", G, ["layer.0", "layer.1"], TASKS)
    assert len(run.losses()) == 0  # not committed yet
    w.flush()
    assert len(run.losses()) == 3 and len(run.cosines(source="train")) == 3 * 3 * 3
    w.close()
    assert run.status == "finished"


def test_gramians_in_another_task_order_are_read_in_run_order(tmp_path):
    rng = np.random.default_rng(0)
    J = rng.standard_normal((3, 8))  # rows: sst, para, sts
    logged_order = [2, 0, 1]  # sts, sst, para
    Jl = J[logged_order]
    with writer(tmp_path / "order") as w:
        Gb = np.stack([Jl[:, :4] @ Jl[:, :4].T, Jl[:, 4:] @ Jl[:, 4:].T])
        w.log_gramians(0, "probe", Gb, ["layer.0", "layer.1"], [TASKS[k] for k in logged_order])
    run = load_run(tmp_path / "order")
    df = run.cosines(blocks="encoder")
    assert list(df["pair"]) == PAIRS
    np.testing.assert_allclose(df["value"], [cos(J[0], J[1]), cos(J[0], J[2]), cos(J[1], J[2])])
    tasks, G = run.gramian(0, source="probe")
    assert tasks == TASKS
    np.testing.assert_allclose(G, J @ J.T)


def test_steps_with_a_subset_of_tasks(tmp_path):
    with writer(tmp_path / "subset") as w:
        w.log_gramians(0, "train", np.stack([np.eye(3)] * 2), ["layer.0", "layer.1"], TASKS)
        w.log_gramians(1, "train", np.stack([np.eye(2)] * 2), ["layer.0", "layer.1"],
                       ["sst", "sts"])
    run = load_run(tmp_path / "subset")
    df = run.cosines(blocks="encoder")
    assert list(zip(df["step"], df["pair"], strict=True)) == [
        (0, "sst-para"), (0, "sst-sts"), (0, "para-sts"), (1, "sst-sts")]
    steps, tasks, G = run.gramian_series("train", "encoder")
    assert list(steps) == [0, 1] and tasks == TASKS
    assert np.isnan(G[1, 1]).all() and G[1, 0, 0] == 2.0 and G[1, 2, 2] == 2.0


def test_single_task_run(tmp_path):
    with writer(tmp_path / "one", tasks=["sst"]) as w:
        w.log_gramians(0, "train", np.full((2, 1, 1), 4.0), ["layer.0", "layer.1"], ["sst"])
        w.log_weights(0, "train", "sum", np.ones(1), ["sst"])
    run = load_run(tmp_path / "one")
    assert len(run.cosines()) == 0 and len(run.s_conflict()) == 0
    assert (run.condition_number()["value"] == 1.0).all()
    np.testing.assert_allclose(run.norms(blocks="encoder")["value"], [np.sqrt(8)])
    stats_ = run.update_stats().set_index("metric")["value"]
    assert stats_["update_norm"] == pytest.approx(np.sqrt(8))
    assert stats_["cos_update_mean"] == pytest.approx(1.0)


def test_zero_gradient_rows_are_nan_not_errors(tmp_path):
    with writer(tmp_path / "zero") as w:
        G = np.diag([1.0, 0.0, 2.0])
        w.log_gramians(0, "train", np.stack([G, G]), ["layer.0", "layer.1"], TASKS)
    run = load_run(tmp_path / "zero")
    df = run.conflicts(blocks="encoder").set_index("pair")
    assert np.isnan(df.loc["sst-para", "conflict"]) and df.loc["sst-sts", "conflict"] == 0
    assert np.isnan(df.loc["sst-para", "conflict_rate"])
    assert run.condition_number(blocks="encoder")["value"].iloc[0] == np.inf


# -- one rule for Gramian sources -----------------------------------------------------------------


def _run_with_config(run_dir, schedule="joint", **config):
    w = RunWriter(run_dir, name=run_dir.name, config=config, tasks=TASKS,
                  blocks=[("layer.0", 4)], method="sum", seed=0, schedule=schedule,
                  commit_every=1, commit_seconds=0)
    return w, load_run(run_dir)


@pytest.mark.parametrize("accessor", ["cosines", "norms", "conflicts", "magnitude_similarity",
                                      "curvature_measure", "condition_number", "s_conflict"])
def test_a_source_the_run_logs_later_is_an_empty_frame_until_then(tmp_path, accessor):
    """A live joint run whose step-0 probe is committed but no training step yet: its train
    rows are an empty frame with the accessor's columns, not an error."""
    w, run = _run_with_config(tmp_path / "live", probe_every=2, log_train_gramians=True)
    w.log_gramians(0, "probe", np.eye(3)[None], ["layer.0"], TASKS)
    w.flush()
    df = getattr(run, accessor)(source="train")
    assert df.empty and list(df.columns) == [*IDENTITY, *DOCUMENTED[accessor]]
    assert not getattr(run, accessor)(source="probe").empty
    w.log_gramians(1, "train", np.eye(3)[None], ["layer.0"], TASKS)
    w.flush()
    assert not getattr(run, accessor)(source="train").empty
    w.close()


@pytest.mark.parametrize("schedule,config,source,keys", [
    ("round_robin", {"probe_every": 5}, "train", "schedule=joint"),
    ("joint", {"probe_every": 5, "log_train_gramians": False}, "train", "log_train_gramians=true"),
    ("joint", {"probe_every": 0}, "probe", "probe_every=N"),
    ("round_robin", {"probe_every": 0}, "probe", "probe_every=N"),
])
def test_a_source_the_config_never_logs_raises_naming_the_keys(tmp_path, schedule, config,
                                                                source, keys):
    w, run = _run_with_config(tmp_path / "r", schedule=schedule, **config)
    for call in (lambda: run.cosines(source=source), lambda: run.norms(source=source),
                 lambda: run.gramian(0, source=source)):
        with pytest.raises(NoGradientDataError, match=f"never logs {source!r}.*{keys}"):
            call()
    w.close()  # finished or not, the answer is the same
    with pytest.raises(NoGradientDataError, match=keys):
        run.cosines(source=source)


def test_a_run_with_no_gradient_data_says_why_for_every_source(tmp_path):
    w, run = _run_with_config(tmp_path / "rr", schedule="round_robin", probe_every=0)
    with pytest.raises(NoGradientDataError, match=r"logs no gradient data: train: "
                                                  r"schedule=round_robin.*probe: probe_every=0"):
        run.cosines()
    with pytest.raises(NoGradientDataError, match="probe_every"):
        run.expected_cosines()
    w.close()
    # a joint run without train Gramians but with probes has data: no error for None
    w, run = _run_with_config(tmp_path / "j", log_train_gramians=False, probe_every=3)
    assert run.cosines().empty  # nothing logged yet, but probes will come
    w.close()


def test_plot_conflicts_passes_on_the_reason(tmp_path):
    import gradlab

    w, run = _run_with_config(tmp_path / "rr", schedule="round_robin", probe_every=0)
    w.close()
    with pytest.raises(NoGradientDataError, match="probe_every=N"):
        gradlab.plot_conflicts(run)


def test_runs_skip_a_run_that_never_logs_the_source(tmp_path):
    from gradlab.runs import load_runs

    w1, _ = _run_with_config(tmp_path / "joint", probe_every=2)
    w2, _ = _run_with_config(tmp_path / "rr", schedule="round_robin", probe_every=2)
    w1.log_gramians(0, "train", np.eye(3)[None], ["layer.0"], TASKS)
    w1.flush()
    runs = load_runs([tmp_path / "joint", tmp_path / "rr"])  # rr: nothing logged yet
    assert set(runs.cosines(source="train")["run"]) == {"joint"}
    only_rr = load_runs([tmp_path / "rr"])
    with pytest.raises(NoGradientDataError, match="schedule=joint"):
        only_rr.cosines(source="train")
    w1.close(), w2.close()


def test_runs_leave_out_a_run_with_no_gradient_data_with_a_warning(tmp_path):
    """Each run's own default source (source=None): a run that logs no gradient data at all
    (a frozen encoder, the demo's fourth run) is left out with a warning naming it; an error
    only when no run has any."""
    from gradlab.runs import load_runs

    w1, _ = _run_with_config(tmp_path / "joint", probe_every=2)
    w2, _ = _run_with_config(tmp_path / "frozen", freeze_encoder=True)
    w1.log_gramians(0, "train", np.eye(3)[None], ["layer.0"], TASKS)
    w1.close(), w2.close()
    runs = load_runs([tmp_path / "joint", tmp_path / "frozen"])
    with pytest.warns(UserWarning, match="left out of cosines.*'frozen'.*freeze_encoder"):
        assert set(runs.cosines()["run"]) == {"joint"}
    with pytest.raises(NoGradientDataError, match="freeze_encoder"):
        load_runs([tmp_path / "frozen"]).cosines()
