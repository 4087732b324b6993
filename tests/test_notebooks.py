"""The analysis notebooks run top to bottom, headless, on a tiny random BERT."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "analysis_notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory):
    """One runs folder for all notebooks: runs trained by one are reused by the next."""
    return tmp_path_factory.mktemp("notebook-runs")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch, shared_runs):
    monkeypatch.setenv("GRADLAB_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("GRADLAB_NOTEBOOK_RUNS", str(shared_runs))
    monkeypatch.setenv("GRADLAB_NOTEBOOK_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


def test_notebooks_are_committed_without_outputs():
    assert len(NOTEBOOKS) == 4
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name
        assert all(c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def test_notebook_env_is_documented():
    text = NOTEBOOKS[0].read_text()
    assert "GRADLAB_NOTEBOOK_TINY" in text and os.sep
