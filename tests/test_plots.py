"""gradlab.lab.plots: figures are built headless, files are written, GIFs have the right frames."""

import numpy as np
import pytest
from PIL import Image

from gradlab import problems
from gradlab.lab import plots


def _lines(fig):
    return fig.axes[0].get_lines()


def test_loss_curves_lines_file_and_log_axis(tmp_path):
    curves = {"sgd": [1.0, 0.5, 0.25], "adam": np.array([1.0, 0.1, 0.01]), "x": [2.0, 1.0, 0.5]}
    out = tmp_path / "sub" / "loss.png"
    fig = plots.plot_loss_curves(curves, path=out, title="t")
    assert len(_lines(fig)) == 3
    assert [ln.get_label() for ln in _lines(fig)] == ["sgd", "adam", "x"]
    assert fig.axes[0].get_yscale() == "log"
    assert out.exists() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_curves_handle_nan_inf_and_nonpositive(tmp_path):
    curves = {"ok": [1.0, 0.5], "diverged": [1.0, 10.0, np.inf, np.nan], "neg": [1.0, -1.0]}
    fig = plots.plot_loss_curves(curves, path=tmp_path / "l.png")
    lines = _lines(fig)
    # one line per curve + one "x" marker at the diverged curve's last finite point
    assert len(lines) == 4
    diverged = [ln for ln in lines if ln.get_label() == "diverged (diverged)"][0]
    y = np.asarray(diverged.get_ydata(), dtype=float)
    np.testing.assert_array_equal(y[:2], [1.0, 10.0])
    assert np.all(np.isnan(y[2:]))
    assert fig.axes[0].get_yscale() == "symlog"  # a non-positive value cannot go on a log axis
    fig = plots.plot_loss_curves({"a": [1.0, 2.0]}, logy=False, x=[10, 20])
    assert fig.axes[0].get_yscale() == "linear"
    np.testing.assert_array_equal(_lines(fig)[0].get_xdata(), [10, 20])


def test_loss_curves_leading_nans_are_gaps_not_divergence():
    """``History.batch_loss`` is NaN in row 0 by design: the rest of the curve is drawn and it
    is not labelled "(diverged)"; a NaN after the first finite value still is divergence."""
    curves = {
        "batch": [np.nan, 1.9, 1.5, 1.2],
        "late": [np.nan, 1.9, np.nan, 1.2],
        "inf_first": [np.inf, 1.0],
        "empty": [np.nan, np.nan],
    }
    fig = plots.plot_loss_curves(curves)
    by_label = {ln.get_label(): np.asarray(ln.get_ydata(), float) for ln in _lines(fig)}
    np.testing.assert_array_equal(by_label["batch"][1:], [1.9, 1.5, 1.2])
    assert np.isnan(by_label["batch"][0])
    np.testing.assert_array_equal(by_label["late (diverged)"][:2], [np.nan, 1.9])
    assert np.all(np.isnan(by_label["late (diverged)"][2:]))
    assert np.all(np.isnan(by_label["inf_first (diverged)"]))
    assert np.all(np.isnan(by_label["empty"]))


def test_loss_curves_into_existing_axes():
    from matplotlib.figure import Figure

    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    out = plots.plot_loss_curves({"a": [1, 2, 3]}, ax=ax2)
    assert out is fig and len(ax2.get_lines()) == 1 and len(ax1.get_lines()) == 0


def test_contour_paths_lines_and_file(tmp_path):
    p = problems.get("himmelblau")
    paths = {
        "a": np.array([[0.0, 0.0], [1.0, 1.0], [3.0, 2.0]]),
        "b": np.array([[0.0, 0.0], [-1.0, 1.0], [np.nan, np.nan]]),
    }
    out = tmp_path / "c.png"
    fig = plots.plot_contour_paths(p, paths, path=out, resolution=40)
    labels = [ln.get_label() for ln in _lines(fig)]
    assert labels.count("a") == 1 and labels.count("b") == 1
    # two paths + start marker + minimiser marker
    assert len(labels) == 4
    assert out.stat().st_size > 1000
    assert fig.axes[0].get_xlim() == p.xlim and fig.axes[0].get_ylim() == p.ylim


def test_contour_on_saddle_uses_linear_levels():
    p = problems.get("saddle")  # unbounded below, no minimisers
    fig = plots.plot_contour_paths(p, {"sgd": np.array([[1.0, 1e-3], [0.5, 2e-3]])}, resolution=30)
    labels = [ln.get_label() for ln in _lines(fig)]
    assert labels == ["sgd", "_start"]


def test_contour_levels_many_numpy_int_and_too_few():
    """300 log levels (more bands than the colormap's 256 colours), a numpy int, and a flat
    window all draw; fewer than 2 levels is a clear ValueError (all crashed in matplotlib)."""
    import dataclasses

    beale = problems.get("beale")
    for levels in (300, np.int64(20), 2, [1.0, 10.0, 100.0]):
        fig = plots.plot_contour(beale, levels=levels, resolution=20)
        assert fig.axes[0].collections  # the filled and line contours
    flat = dataclasses.replace(problems.get("quadratic"), fn=lambda v: 0.0 * v[0] + 1.0)
    assert plots.plot_contour(flat, resolution=10).axes[0].collections
    for bad in (1, 0, [1.0], [3.0, 1.0], [1.0, np.nan]):
        with pytest.raises(ValueError, match="levels must"):
            plots.plot_contour(beale, levels=bad, resolution=10)
    with pytest.raises(TypeError, match="levels must"):
        plots.plot_contour(beale, levels=True, resolution=10)


def test_contour_paths_rejects_bad_shapes():
    with pytest.raises(ValueError):
        plots.plot_contour_paths(problems.get("beale"), {"a": np.zeros((5, 3))}, resolution=20)
    with pytest.raises(ValueError):
        plots.animate_paths(problems.get("beale"), {}, "x.gif")


@pytest.mark.parametrize(("length", "frames", "expected"), [(40, 12, 12), (5, 12, 5)])
def test_animation_gif_frames(tmp_path, length, frames, expected):
    rng = np.random.default_rng(0)
    paths = {
        "a": np.cumsum(rng.normal(size=(length, 2)) * 0.1, axis=0),
        "b": np.cumsum(rng.normal(size=(length // 2 + 1, 2)) * 0.1, axis=0),
    }
    out = tmp_path / "race.gif"
    got = plots.animate_paths(
        problems.get("beale"), paths, out, frames=frames, resolution=30, dpi=40
    )
    assert got == str(out) and out.stat().st_size > 1000
    with Image.open(out) as im:
        assert im.format == "GIF"
        assert im.n_frames == expected
