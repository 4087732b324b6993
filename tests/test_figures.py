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
                 "projection_rate", "gradient_arrows"):
        assert name in names, f"{name}.png not written; found {sorted(names)}"
    assert {p.stem for p in out.glob("*.pdf")} == names


@pytest.mark.parametrize("width", ["acl-column", "icml-page"])
@pytest.mark.parametrize("layout", [None, "constrained"])
def test_figure_with_colorbar_exports_at_a_width(run_dir, tmp_path, width, layout):
    fig, ax = plt.subplots(layout=layout)
    plot.layer_heatmap(load_run(run_dir), pair="sst-para", source="probe", ax=ax)
    (png,) = plot.export(fig, tmp_path / "heatmap.png", width=width)
    with Image.open(png) as im:
        assert im.width == pytest.approx(plot.WIDTHS[width] * 300, abs=2)
