"""``mlip plot RUN_DIR`` (learning curve) and ``mlip eval --plot`` (parity plot)."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

import mlip.cli.plot as plot_mod  # noqa: E402
from mlip.cli.main import main  # noqa: E402
from tests.conftest import DATA  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.fixture
def captured(monkeypatch):
    """Figures passed to save_figure (they are still written)."""
    figures = []
    original = plot_mod.save_figure

    def keep(fig, path):
        figures.append(fig)
        original(fig, path)

    monkeypatch.setattr(plot_mod, "save_figure", keep)
    return figures


def test_plot_learning_curve(trained_run, tmp_path, captured):
    out = tmp_path / "curve.png"
    assert main(["plot", str(trained_run), "-o", str(out)]) == 0
    assert _is_png(out)
    (fig,) = captured
    rows = plot_mod.read_metrics(str(trained_run / "metrics.csv"))
    targets = plot_mod.metric_targets(list(rows[0]))
    assert targets == ["energy", "forces"]
    # one panel per target; a second row against wall time when metrics.csv records it
    n_rows = 2 if "wall_time_s" in rows[0] else 1
    assert len(fig.axes) == len(targets) * n_rows
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    assert fig.axes[0].get_xlabel() == "epoch"


def test_plot_default_output_in_run_dir(trained_run):
    assert main(["plot", str(trained_run)]) == 0
    assert _is_png(trained_run / "learning_curve.png")


def test_eval_parity_plot(trained_run, tmp_path, captured):
    out = tmp_path / "parity.png"
    args = ["eval", str(trained_run / "model.pt"), str(DATA / "ethanol" / "test.xyz"), "--device", "cpu"]
    assert main([*args, "--plot", str(out)]) == 0
    assert _is_png(out)
    (fig,) = captured
    assert len(fig.axes) == 2  # energy, forces
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("energy: RMSE") and "eV/atom" in titles[0]
    assert titles[1].startswith("forces: RMSE") and "eV/Å" in titles[1]
    # forces: one point per component of the 200 test structures of 9 atoms
    assert len(fig.axes[1].collections[0].get_offsets()) == 200 * 9 * 3


def test_plot_missing_run_is_one_line_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlip: error:") and "metrics.csv" in err[0]
