"""`gradlab figures RUN` end to end on a synthetic run, and exports of figures with colorbars."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from helpers_runs import make_synthetic_run  # noqa: E402
from PIL import Image  # noqa: E402

from gradlab import plot  # noqa: E402
from gradlab.cli import main  # noqa: E402
from gradlab.run import load_run  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("figures") / "pcgrad-s0", method="pcgrad")


def test_figures_command_writes_every_figure(run_dir, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["figures", str(run_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "wrote" in printed.out
    names = {p.stem for p in out.glob("*.png")}
    for name in ("conflicts", "layer_heatmap_sst-para", "training_curves", "cosine_probe",
                 "projection_rate", "gradient_arrows", "expected_cosine"):
        assert name in names, f"{name}.png not written; found {sorted(names)}"
    assert {p.stem for p in out.glob("*.pdf")} == names


@pytest.mark.slow  # three whole figure sets (about 40 s here)
def test_figures_that_would_draw_a_constant_are_skipped_with_the_reason(runs_folder, tmp_path,
                                                                         capsys):
    """A summed-loss run never projects (projection rate 0 at every step); round-robin's task
    weights are its schedule: those files are not written, and stderr says why."""
    for name, skipped in (("sum-s0", {"projection_rate"}),
                          ("round_robin-s0", {"projection_rate", "task_weights"}),
                          ("pcgrad-s0", set())):
        out = tmp_path / name
        assert main(["figures", str(runs_folder / name), "--out", str(out)]) == 0
        names = {p.stem for p in out.glob("*.png")}
        assert not skipped & names and {"training_curves", "conflicts"} <= names
        err = capsys.readouterr().err
        for figure in skipped:
            assert f"skipped {figure}: " in err
        if name == "pcgrad-s0":
            assert {"projection_rate", "task_weights"} <= names


@pytest.mark.parametrize("width", ["acl-column", "icml-page"])
@pytest.mark.parametrize("layout", [None, "constrained"])
def test_figure_with_colorbar_exports_at_a_width(run_dir, tmp_path, width, layout):
    fig, ax = plt.subplots(layout=layout)
    plot.layer_heatmap(load_run(run_dir), pair="sst-para", source="probe", ax=ax)
    (png,) = plot.export(fig, tmp_path / "heatmap.png", width=width)
    with Image.open(png) as im:
        assert im.width == pytest.approx(plot.WIDTHS[width] * 300, abs=2)


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare-runs")
    for name, method, schedule in (("sum-s0", "sum", "joint"), ("pcgrad-s0", "pcgrad", "joint"),
                                   ("round_robin-s0", "sum", "round_robin")):
        make_synthetic_run(root / name, method=method, schedule=schedule, steps=30)
    return root


def test_compare_command_on_a_folder_of_runs(runs_folder, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(runs_folder), "--out", str(out), "--width", "icml-column"]) == 0
    assert "pcgrad" in capsys.readouterr().out
    names = {p.stem for p in out.glob("*.png")}
    for name in ("compare", "cosine_probe_sst-para", "cosine_probe_para-sts",
                 "gradient_arrows_pcgrad-s0", "conflicts_sum-s0"):
        assert name in names, f"{name}.png not written; found {sorted(names)}"
    with Image.open(out / "compare.png") as im:
        assert im.width == pytest.approx(plot.WIDTHS["icml-column"] * 300, abs=2)
    assert (out / "compare.csv").is_file() and (out / "compare.tex").is_file()


def test_compare_takes_lists_of_runs_or_folders_and_warns_about_unlike_runs(runs_folder,
                                                                           tmp_path):
    folders = [runs_folder / "sum-s0", runs_folder / "pcgrad-s0"]
    fig, table = plot.compare(folders)
    assert set(table["method"]) == {"sum", "pcgrad"}
    _, same = plot.compare([load_run(f) for f in folders])
    assert same.equals(table)
    _, whole = plot.compare(str(runs_folder))
    assert set(whole["method"]) == {"sum", "pcgrad", "round_robin"}
    with pytest.raises(TypeError, match="load_runs"):
        plot.compare(42)
    longer = make_synthetic_run(tmp_path / "mgda-s0", method="mgda", steps=40)
    with pytest.warns(UserWarning, match=r"differ in settings.*steps"):
        plot.comparison_table([folders[0], longer])
