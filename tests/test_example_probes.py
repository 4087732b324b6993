"""Example probes during training (issue 16 item 2): per-example Gramians of training examples
in the run store, the Run accessors on them, their config keys, and resuming bit for bit."""

from __future__ import annotations

import sqlite3
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config, tiny_parts
from safetensors.torch import load_file

import gradlab
from gradlab.config import ConfigError, load_config
from gradlab.data import read_task_file
from gradlab.per_example import example_gradients
from gradlab.plot._examples import conflicting_examples
from gradlab.probe import example_probe, example_probe_counts
from gradlab.probing import load_model
from gradlab.store import RunWriter, StoreReader


class Crash(Exception):
    """Stands in for a crash in the middle of a run."""


def _values(tmp_path, name, **changes):
    return tiny_config(tmp_path, **{
        "name": name, "steps": 6, "train_limit": 32, "dev_limit": 16, "max_length": 24,
        "eval_every": 3, "eval_batch_size": 16, "checkpoint_every": 2, "probe_every": 2,
        "method": "pcgrad", "example_probe_every": 2, "example_probe_size": 8, **changes})


def _train(values, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # truncation notices
        return gradlab.train(None, **values, **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A finished tiny pcgrad run with example probes at steps 0, 2, 4 and 6."""
    runs = tmp_path_factory.mktemp("example-probes")
    return _train(_values(runs, "reference"))


def _rows(run_dir, table):
    con = sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True)
    try:
        return sorted(con.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
    finally:
        con.close()


def _examples_of(run, grads):
    """task -> the run's training examples with the ids of ``grads``, in its order, as
    TaskExamples and as in-memory (sentences..., label) tuples."""
    cfg = load_config(run.path / "config.yaml")
    from gradlab.config import task_table_args
    from gradlab.data import resolve_data_dir
    from gradlab.tasks import task_table

    as_files, as_tuples = {}, {}
    for task in dict.fromkeys(grads.tasks):
        spec = task_table(**task_table_args(cfg))[task]
        data = read_task_file(resolve_data_dir(cfg.data_dir) / spec.file("train"), spec.reader,
                              task=task, limit=cfg.train_limit)
        rows = [data.ids.index(i) for i, t in zip(grads.ids, grads.tasks, strict=True)
                if t == task]
        import dataclasses

        as_files[task] = dataclasses.replace(
            data, ids=[data.ids[r] for r in rows], texts=[data.texts[r] for r in rows],
            labels=np.asarray(data.labels)[rows], line_numbers=[data.line_numbers[r] for r in rows],
            source_stat=None)
        lo = spec.reader.label_range[0]
        as_tuples[task] = [(*data.texts[r], float(data.labels[r]) if spec.reader.label_kind ==
                            "regression" else int(data.labels[r]) + lo) for r in rows]
    return as_files, as_tuples


def test_accessors_equal_example_gradients_of_the_checkpoint(reference):
    run = reference.load()
    assert run.example_probe_steps() == [0, 2, 4, 6]
    stored = run.example_gradients()  # the last probe: step 6, the final model
    assert len(stored.ids) == 8 and set(stored.tasks) == {"sst", "para", "sts"}
    assert all(stored.texts) and not np.isnan(stored.labels).any()
    as_files, as_tuples = _examples_of(run, stored)
    loaded = load_model(reference.path / "checkpoints" / "last")
    direct = example_gradients(loaded, as_files)
    assert direct.ids == stored.ids and direct.tasks == stored.tasks
    assert direct.block_names == stored.block_names
    torch.testing.assert_close(direct.block_gramians, stored.block_gramians, rtol=1e-5,
                               atol=1e-10)
    # the in-memory form of gradlab.gradients gives the same Gramian
    in_memory = example_gradients(loaded, as_tuples)
    torch.testing.assert_close(in_memory.block_gramians, stored.block_gramians, rtol=1e-5,
                               atol=1e-10)

    frame = run.example_alignment()
    expected = direct.alignment()
    assert list(frame.columns[:5]) == ["run", "method", "seed", "schedule", "step"]
    assert (frame["step"] == 6).all() and (frame["run"] == "reference").all()
    pd.testing.assert_frame_equal(frame[expected.columns].drop(columns=["cosine", "norm", "loss"]),
                                  expected.drop(columns=["cosine", "norm", "loss"]))
    np.testing.assert_allclose(frame["cosine"], expected["cosine"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(frame["norm"], expected["norm"], rtol=1e-5)
    np.testing.assert_allclose(frame["loss"], expected["loss"], rtol=1e-5)

    worst = run.conflicting_examples(k=2)
    assert set(worst["kind"]) == {"conflicting"} and worst["rank"].max() <= 2
    assert worst["text"].str.len().gt(0).all()
    ref = direct.extremes(k=2)
    ref = ref[ref["kind"] == "conflicting"].reset_index(drop=True)
    assert worst["example"].tolist() == ref["example"].tolist()
    fig = conflicting_examples(worst, k=2)  # the table figure takes the frame as it is
    assert fig.axes


def test_earlier_steps_and_probe_draws(reference):
    run = reference.load()
    first, second = run.example_gradients(0), run.example_gradients(2)
    assert first.ids != second.ids  # each step draws its own examples
    assert run.example_alignment(step=2)["step"].eq(2).all()
    with pytest.raises(ValueError, match=r"no example probe at step 3; example probes at steps "
                                         r"\[0, 2, 4, 6\]"):
        run.example_alignment(step=3)
    with pytest.raises(ValueError, match="block must be 'encoder' or one of"):
        run.conflicting_examples(block="layer.9")
    # per block: the blocks sum to the encoder Gramian the store holds
    probe = StoreReader(reference.path).example_probes(2)[0]
    assert probe.blocks[-1] == "encoder"
    np.testing.assert_allclose(probe.G[:-1].sum(0), probe.G[-1], rtol=1e-12)


def test_example_probe_draws_about_n_over_t_and_uses_no_training_rng():
    assert example_probe_counts({"sst": 30, "para": 30, "sts": 30}, 8) == \
        {"sst": 3, "para": 3, "sts": 2}
    assert example_probe_counts({"sst": 2, "para": 30}, 10) == {"sst": 2, "para": 5}
    parts = tiny_parts()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a = example_probe(parts, 4, 9)
    assert torch.equal(torch.get_rng_state(), before)
    b = example_probe(tiny_parts(), 4, 9)
    assert a.ids == b.ids and torch.equal(a.block_gramians, b.block_gramians)
    assert a.tasks == ["sst"] * 3 + ["para"] * 3 + ["sts"] * 3
    assert parts.model.training  # the mode is restored
    assert example_probe(parts, 5, 9).ids != a.ids


def test_example_probes_change_nothing_else_and_resume_exactly(tmp_path, reference):
    # the same run without example probes ends with the same parameters
    plain = _train(_values(tmp_path, "plain", example_probe_every=0))
    a = load_file(str(plain.path / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(reference.path / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert plain.load().example_probe_steps() == []
    with pytest.raises(ValueError, match="logged no example probes"):
        plain.load().conflicting_examples()

    # crash after step 3 (last checkpoint: step 2), resume: the same run, bit for bit
    values = _values(tmp_path, "crashed")

    def crash(done, model):
        if done == 3:
            raise Crash("crash after step 3")

    with pytest.raises(Crash):
        _train(values, _after_step=crash)
    assert StoreReader(tmp_path / "runs" / "crashed").example_probes(2)
    resumed = _train(values, resume=True)
    a = load_file(str(resumed.path / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    for table in ("example_gramians", "gramians", "weights", "projections"):
        assert _rows(resumed.path, table) == _rows(reference.path, table), table
    assert resumed.load().example_probe_steps() == [0, 2, 4, 6]


@pytest.mark.parametrize("changes, match", [
    ({"example_probe_every": -1}, "example_probe_every=-1 must be an integer >= 0"),
    ({"example_probe_every": "often"}, "example_probe_every='often' must be of type int"),
    ({"example_probe_every": 5, "example_probe_size": 5}, r"example_probe_size=5 must be an "
                                                          r"integer in \[6, 4096\]"),
    ({"example_probe_every": 5, "example_probe_size": 1.5}, "example_probe_size=1.5 must be "
                                                            "of type int"),
    ({"example_probe_every": 5, "regression_loss": "pearson"}, "need a per-example loss"),
])
def test_config_errors(changes, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, changes)


def test_config_defaults_leave_example_probes_off():
    cfg = load_config(None, {})
    assert cfg.example_probe_every == 0 and cfg.example_probe_size == 48
    load_config(None, {"example_probe_every": 5, "tasks": ["sst", "para"],
                       "example_probe_size": 4, "regression_loss": "pearson"})  # no sts: fine


def test_store_without_the_table_and_writer_checks(tmp_path):
    run_dir = tmp_path / "old"
    with RunWriter(run_dir, name="old", config={}, tasks=["sst", "para"],
                   blocks=[("layer.0", 2)], method="sum", seed=0, schedule="joint") as w:
        w.log_scalars(0, {"loss": 0.7}, task="sst")
        with pytest.raises(ValueError, match="block_names must be distinct blocks"):
            w.log_example_gramians(0, np.zeros((1, 2, 2)), ["layer.9"], ["a", "b"],
                                   ["sst", "para"], [0.1, 0.2])
        with pytest.raises(ValueError, match="tasks must be tasks of the run"):
            w.log_example_gramians(0, np.zeros((1, 2, 2)), ["layer.0"], ["a", "b"],
                                   ["sst", "qqp"], [0.1, 0.2])
        with pytest.raises(ValueError, match=r"must have shape \[B=1, N, N\] with N=3"):
            w.log_example_gramians(0, np.zeros((1, 2, 2)), ["layer.0"], ["a", "b", "c"],
                                   ["sst", "para", "sst"], [0.1, 0.2, 0.3])
    con = sqlite3.connect(run_dir / "run.sqlite")
    con.execute("DROP TABLE example_gramians")  # a store written before example probes
    con.commit()
    con.close()
    run = gradlab.load_run(run_dir)
    assert run.example_probe_steps() == []
    with pytest.raises(ValueError, match="logged no example probes"):
        run.example_alignment()
