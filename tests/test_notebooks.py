"""The analysis notebooks run top to bottom in a real Jupyter kernel on a tiny random BERT,
and every plotting cell shows its figure."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "analysis_notebooks").glob("*.ipynb"))
#: a cell that draws: calls a gradlab figure or makes a matplotlib figure
PLOTTING = re.compile(r"plt\.subplots|plot_conflicts\(|compare\(|plot\.[a-z_]+\((runs|run|live)")


@pytest.fixture(autouse=True)
def _kernel_imports_this_checkout(monkeypatch):
    """The kernel is a new process: without this it would import whichever gradlab is
    installed, not the one under test."""
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + (os.pathsep + path if path else ""))


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory):
    """One runs folder for all notebooks: runs trained by one are reused by the next."""
    return tmp_path_factory.mktemp("notebook-runs")


def _execute(nb, cwd: Path) -> None:
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()


def _images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_every_figure(path, tmp_path, monkeypatch, shared_runs):
    monkeypatch.setenv("GRADLAB_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("GRADLAB_NOTEBOOK_RUNS", str(shared_runs))
    monkeypatch.setenv("GRADLAB_NOTEBOOK_FIGURES", str(tmp_path / "figures"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend
    nb = nbformat.read(path, as_version=4)
    _execute(nb, tmp_path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    plotting = [c for c in code if PLOTTING.search(c.source)]
    assert plotting, "no plotting cell found"
    blank = [c.source.splitlines()[0] for c in plotting if _images(c) == 0]
    assert not blank, f"plotting cells without an image output: {blank}"


@pytest.mark.slow
def test_figures_keep_showing_after_a_gradlab_figure(tmp_path, monkeypatch):
    """The inline backend turns interactive mode on inside the first figure-level call; a
    theme that reset it on exit left every later figure of the session blank."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers_runs import make_synthetic_run

    run_dir = make_synthetic_run(tmp_path / "pcgrad-s0", steps=20)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    cells = [
        f"import gradlab, matplotlib.pyplot as plt\nrun = gradlab.load_run({str(run_dir)!r})",
        "fig = gradlab.plot_conflicts(run)",
        "fig, ax = plt.subplots()\nax.plot([0, 1], [1, 0]);",
        "fig, ax = plt.subplots()\ngradlab.plot.cosine_over_training(run, ax=ax);",
        "fig, table = gradlab.compare([run])",
        "fig, ax = plt.subplots()\ngradlab.plot.gradient_norms(run, ax=ax);",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    _execute(nb, tmp_path)
    assert [_images(c) for c in nb.cells] == [0, 1, 1, 1, 1, 1]


def test_notebooks_are_committed_without_outputs():
    assert len(NOTEBOOKS) == 6
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name
        assert all(c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def test_notebooks_share_one_setup_and_state_their_budget():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert "Run time on this machine" in nb.cells[0].source, path.name
        assert "nb = notebook_setup()" in nb.cells[1].source, path.name
        assert not any("subprocess" in c.source for c in nb.cells), path.name
    assert "GRADLAB_NOTEBOOK_TINY" in NOTEBOOKS[0].read_text()


@pytest.mark.slow
def test_ensure_runs_trains_one_run_per_core_at_a_time_on_one_thread(tmp_path, monkeypatch):
    # six trainings of a core's worth of threads each on 2 cores ran about 3x slower than in turn
    import gradlab
    from gradlab.notebook import METHODS, notebook_setup

    monkeypatch.setenv("GRADLAB_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    nb = notebook_setup(tiny=True)
    nb.budget.pop("threads")  # the tiny budget names 1 itself: the default is under test
    nb.budget.update(steps=2, eval_every=0, probe_every=0)
    nb.max_parallel = 1
    methods = {k: METHODS[k] for k in ("sum", "pcgrad")}
    first, second = (gradlab.load_run(f) for f in nb.ensure_runs(methods=methods))
    assert first.status == second.status == "finished"
    assert first.config["threads"] == second.config["threads"] == 1
    # ISO timestamps (seconds) of one clock: the second run's store exists only after the
    # first run ended
    assert second.reader.meta()["created_at"] >= first.reader.meta()["ended_at"]


def test_the_notebooks_small_budget_trains_at_the_demos_learning_rates():
    # at the default lr (5e-5) the fresh heads learned nothing in 60 steps (STS r 0.02)
    from gradlab.config import load_config
    from gradlab.notebook import SMALL_BUDGET

    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert (SMALL_BUDGET["lr"], SMALL_BUDGET["encoder_lr"]) == (demo.lr, demo.encoder_lr)
