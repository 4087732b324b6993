"""gradlab.runs: load_runs, the concatenating accessors generated from Run's, their errors."""

from __future__ import annotations

import doctest
import inspect
import pydoc

import pandas as pd
import pytest
from helpers_runs import make_synthetic_run

import gradlab
from gradlab.run import IDENTITY, Run
from gradlab.runs import ACCESSORS, Runs, load_runs
from gradlab.store import StoreError


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    make_synthetic_run(root / "pcgrad-s0", method="pcgrad", seed=0)
    make_synthetic_run(root / "layerwise-s1", method="pcgrad_layerwise", seed=1)
    make_synthetic_run(root / "rr-s2", method="sum", schedule="round_robin", seed=2)
    return root


def test_module_docstring_example_runs():
    import gradlab.runs

    assert doctest.testmod(gradlab.runs).failed == 0


def test_the_old_import_paths_still_work():
    from gradlab.run import Runs as old_runs
    from gradlab.run import load_runs as old_load_runs

    assert old_runs is Runs and old_load_runs is load_runs
    assert gradlab.Runs is Runs and gradlab.load_runs is load_runs


# -- concatenation ------------------------------------------------------------------------------


def test_load_runs_concatenates_with_identity_columns(runs_root):
    runs = load_runs([runs_root / "pcgrad-s0", runs_root / "layerwise-s1", runs_root / "rr-s2"])
    assert isinstance(runs, Runs) and len(runs) == 3
    assert [r.name for r in runs] == ["pcgrad-s0", "layerwise-s1", "rr-s2"]
    assert runs["rr-s2"].schedule == "round_robin" and runs[0].name == "pcgrad-s0"
    losses = runs.losses()
    assert list(losses.columns) == [*IDENTITY, "step", "task", "value"]
    assert losses.groupby("run").size().to_dict() == {"pcgrad-s0": 180, "layerwise-s1": 180,
                                                      "rr-s2": 60}
    assert losses.groupby("run")["method"].first().to_dict() == {
        "pcgrad-s0": "pcgrad", "layerwise-s1": "pcgrad_layerwise", "rr-s2": "sum"}
    assert losses.groupby("run")["seed"].first().to_dict() == {
        "pcgrad-s0": 0, "layerwise-s1": 1, "rr-s2": 2}
    # round-robin runs log no train Gramians: asking for 'train' reads the other runs
    train = runs.cosines(source="train")
    assert set(train["run"]) == {"pcgrad-s0", "layerwise-s1"}
    probe = runs.conflicts(source="probe", blocks=["encoder"])
    assert set(probe["run"]) == {"pcgrad-s0", "layerwise-s1", "rr-s2"}
    assert len(probe) == 3 * 6 * 3
    assert set(runs.update_stats()["run"]) == {"pcgrad-s0", "layerwise-s1"}
    # a folder of runs
    assert [r.name for r in load_runs(runs_root)] == ["layerwise-s1", "pcgrad-s0", "rr-s2"]
    assert len(load_runs(runs_root / "rr-s2")) == 1
    assert repr(runs).startswith("Runs(3 runs: pcgrad-s0 (pcgrad, seed 0)")


def test_load_runs_errors(runs_root, tmp_path):
    runs = load_runs(runs_root)
    with pytest.raises(ValueError, match=r"none of the 3 runs has source \['bogus'\]"):
        runs.cosines(source="bogus")
    with pytest.raises(ValueError, match=r"none of the 3 runs has blocks \['layer.7'\]"):
        runs.cosines(blocks=["encoder", "layer.7"])
    with pytest.raises(ValueError, match="unique.*pcgrad-s0"):
        load_runs([runs_root / "pcgrad-s0", runs_root / "pcgrad-s0"])
    with pytest.raises(ValueError, match="no runs"):
        load_runs([])
    with pytest.raises(StoreError, match="no run stores"):
        load_runs(tmp_path)
    with pytest.raises(KeyError, match="no run named 'x'"):
        runs["x"]


def test_to_parquet_concatenates(runs_root, tmp_path):
    load_runs(runs_root).to_parquet(tmp_path / "all")
    assert set(pd.read_parquet(tmp_path / "all" / "losses.parquet")["run"]) == {
        "pcgrad-s0", "layerwise-s1", "rr-s2"}


# -- the generated accessors ---------------------------------------------------------------------


#: per-run accessors of the example probes (`gradlab.run_examples`), not forwarded by Runs
EXAMPLE_ACCESSORS = ("example_probe_steps", "example_gradients", "example_alignment",
                     "conflicting_examples")


def test_accessors_are_every_frame_accessor_of_run():
    frame_accessors = {name for name, member in inspect.getmembers(Run, inspect.isfunction)
                       if not name.startswith("_") and name not in
                       ("gramian", "gramian_series", "to_parquet", *EXAMPLE_ACCESSORS)}
    assert set(ACCESSORS) == frame_accessors and len(ACCESSORS) == 19


@pytest.mark.parametrize("name", ACCESSORS)
def test_accessors_show_run_signature_and_docstring(name):
    method = getattr(Runs, name)
    assert name in dir(Runs)  # tab completion lists it
    assert method.__name__ == name and method.__qualname__ == f"Runs.{name}"
    assert inspect.signature(method) == inspect.signature(getattr(Run, name))
    assert inspect.getdoc(getattr(Run, name)) in method.__doc__
    assert f"{name}{inspect.signature(method)}" in pydoc.render_doc(Runs, renderer=pydoc.plaintext)


@pytest.mark.parametrize("name", ACCESSORS)
def test_accessors_equal_the_concatenation_of_the_runs(runs_root, name):
    runs = load_runs(runs_root)
    expected = pd.concat([getattr(r, name)() for r in runs], ignore_index=True)
    pd.testing.assert_frame_equal(getattr(runs, name)(), expected)


def test_positional_and_keyword_arguments_are_forwarded(runs_root):
    runs = load_runs(runs_root)
    pd.testing.assert_frame_equal(runs.conflicts("probe", 7, "encoder"),
                                  runs.conflicts(source="probe", window=7, blocks="encoder"))
    pd.testing.assert_frame_equal(runs.s_conflict(-0.1), runs.s_conflict(S=-0.1))
    assert set(runs.weights()["source"]) == {"train"}  # Run.weights' default source
    with pytest.raises(TypeError, match="bogus"):
        runs.cosines(bogus=1)
    with pytest.raises(TypeError, match="too many positional"):
        runs.projections(1)
