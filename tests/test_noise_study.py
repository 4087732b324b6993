"""gradlab.noise: the noise study on a tiny random BERT, its table, figure and CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_ENCODER

from gradlab import calibration, noise, probing
from gradlab.cli import main

TINY = {"tiny_encoder": dict(TINY_ENCODER), "train_limit": 48, "max_length": 24}


@pytest.fixture(scope="module")
def study():
    return noise.noise_study(None, (2, 4), rounds=2, replicates=3, seed=1, progress=False, **TINY)


def test_table_holds_every_quantity_with_intervals(study):
    t = study.table
    assert list(t.columns) == list(noise.COLUMNS)
    measured = t[t.fit_batch_size.isna()]
    for b in (2, 4):
        sel = measured[measured.batch_size == b]
        pairs = sel[sel.kind == "pair"]
        assert set(pairs.name) == {"sst-para", "sst-sts", "para-sts"}
        assert {"raw_cos", "expected_cos", "conflict_rate"} <= set(pairs.quantity)
        assert {"within_cos", "b_noise", "signal_share"} <= set(sel[sel.kind == "task"].quantity)
        # K = 3: jackknife over replicate batches, S*K = 6 batches per task
        assert (sel.units == "replicates").all() and (sel.n == 6).all()
        raw = sel[sel.quantity.isin(["raw_cos", "within_cos"])]
        assert np.isfinite(raw[["estimate", "lo", "hi"]].to_numpy()).all()
        assert (raw.lo <= raw.estimate).all() and (raw.estimate <= raw.hi).all()
    # undetermined values are NaN with a reason, never silently reported
    rho = measured[measured.quantity == "expected_cos"]
    assert (rho.estimate.isna() == (rho.reason != "")).all()
    # predictions from every batch size to every batch size, pairs and tasks
    pred = t[t.fit_batch_size.notna()]
    assert len(pred) == 2 * 2 * 6
    assert set(pred.quantity) == {"predicted_raw_cos", "predicted_within_cos"}


def test_table_equals_calibration_on_the_stored_gramians(study):
    assert study.gramians[4].shape == (2, len(study.block_names), 9, 9)
    G = study.gramians[4].sum(1)
    pf = calibration.pair_frame(G, study.tasks)
    mine = study.table[(study.table.batch_size == 4) & study.table.fit_batch_size.isna() &
                       (study.table.kind == "pair")]
    pd.testing.assert_frame_equal(
        mine[["name", "quantity", "estimate", "lo", "hi"]].reset_index(drop=True),
        pf.rename(columns={"pair": "name"})[["name", "quantity", "estimate", "lo", "hi"]])


def test_noise_model_prediction_from_the_table(study):
    t = study.table
    fit = t[t.fit_batch_size.isna() & (t.batch_size == 4)]
    B = fit[fit.quantity == "b_noise"].set_index("name").estimate
    for task in study.tasks:
        if np.isfinite(B[task]):
            got = t[(t.fit_batch_size == 4) & (t.batch_size == 2) & (t.name == task)].estimate
            assert got.iloc[0] == pytest.approx(1 / (1 + B[task] / 2))
        # at its own batch size the within-task prediction is the signal share
        own = t[(t.fit_batch_size == 4) & (t.batch_size == 4) & (t.name == task)].estimate
        share = fit[(fit.quantity == "signal_share") & (fit.name == task)].estimate
        if np.isfinite(B[task]):
            assert own.iloc[0] == pytest.approx(share.iloc[0])


def test_same_seed_same_study_and_batches_disjoint():
    draws = noise._Draws(20, 0, 4, "sst")
    taken = [draws.take(8) for _ in range(2)]
    assert len(set(np.concatenate(taken))) == 16  # disjoint while the data lasts
    third = draws.take(8)  # only 4 left: a fresh permutation, no repeat inside the draw
    assert len(set(third)) == 8
    again = noise._Draws(20, 0, 4, "sst")
    np.testing.assert_array_equal(again.take(8), taken[0])


def test_gramians_equal_gradients_on_the_same_batches():
    loaded = probing.load_model(None, **TINY)
    study = noise.noise_study(loaded, (2,), rounds=1, replicates=3, progress=False)
    # rebuild round 0's batches and compute them through probing.gradients' engine path
    from gradlab.build import split_from_config as load_split

    data = {t: load_split(loaded.config, t, "train", loaded.tokenizer).tokenized
            for t in loaded.tasks}
    index = {t: noise._Draws(len(data[t]), 0, 2, t).take(6).reshape(3, 2) for t in data}
    batches = [(t, probing._batch(loaded, data[t], index[t][a])) for a in range(3)
               for t in loaded.tasks]
    engine, _ = probing.gradient_engine(loaded.model, "layers", rows=9)
    _, G = probing._task_gradients(loaded.model, batches, engine)
    np.testing.assert_allclose(study.gramians[2][0], G)


def test_save_figure_and_summary(study, tmp_path):
    paths = study.save(tmp_path / "out")
    back = pd.read_csv(paths["table"])
    assert len(back) == len(study.table)
    fig = study.figure()
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 4
    titles = [ax.get_title(loc="left") for ax in fig.axes[:3]]
    assert titles == ["SST–PARA", "SST–STS", "PARA–STS"]
    from gradlab.plot._noise import noise_study_figure

    again = noise_study_figure(back, fit_batch_size=2)  # the CSV read back draws the same
    assert len(again.axes) == 4
    summary = study.summary()
    assert list(summary.columns) == ["batch_size", "pair", "raw_cos", "within_cos_i",
                                     "within_cos_j", "expected_cos", "reason"]
    assert len(summary) == 6
    with pytest.raises(ValueError, match="fit_batch_size must be one of"):
        noise_study_figure(back, fit_batch_size=16)


def test_cli_end_to_end(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("tiny_encoder: {hidden_size: 32, num_hidden_layers: 2, "
                      "num_attention_heads: 2, intermediate_size: 64}\nmax_length: 24\n")
    out = tmp_path / "study"
    code = main(["noise-study", str(config), "train_limit=32", "--batch-sizes", "1,4",
                 "--rounds", "2", "--replicates", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    for name in ("noise_study.csv", "gramians.npz", "info.json", "noise_study.png",
                 "noise_study.pdf"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "noise_study.csv")
    assert set(table.batch_size) == {1, 4}
    assert (table[table.fit_batch_size.isna()].units == "steps").all()  # K=2: over rounds
    printed = capsys.readouterr().out
    assert "para-sts" in printed and "expected_cos" in printed
    code = main(["noise-study", str(config), "--batch-sizes", "1,x", "--out", str(out)])
    assert code == 2
    assert "--batch-sizes must be comma-separated integers" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, match", [
    ({"replicates": 1}, "replicates must be an int >= 2"),
    ({"replicates": 2, "rounds": 1}, "gives no interval"),
    ({"batch_sizes": (0, 4)}, "batch_sizes must be positive ints"),
    ({"level": 1.5}, "level must be in"),
    ({"batch_sizes": (64,), "rounds": 1}, "fewer than replicates x batch size"),
])
def test_bad_arguments_name_the_parameter(kwargs, match):
    args = {"batch_sizes": (2,), "rounds": 2, "replicates": 3, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        noise.noise_study(None, **args, **TINY)
