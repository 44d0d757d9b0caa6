"""gradlab.lab.trajectories and gradlab.lab.race: paths, the CLI, errors."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from gradlab import problems
from gradlab.cli import main as cli_main
from gradlab.lab import race as race_mod
from gradlab.lab import trajectories


def test_trajectory_matches_hand_written_gradient_descent():
    p = problems.quadratic(kappa=4.0)
    lr = 0.1
    path = trajectories.trajectory(p, optax.sgd(lr), steps=20)
    assert path.shape == (21, 2)
    x = np.asarray(p.start, np.float64)
    want = [x.copy()]
    for _ in range(20):
        x = x - lr * np.array([1.0, 4.0]) * x  # gradient of (x^2 + 4 y^2) / 2
        want.append(x.copy())
    np.testing.assert_allclose(path, np.asarray(want), rtol=1e-5, atol=1e-7)


def test_trajectory_batched_starts_and_errors():
    p = problems.get("himmelblau")
    starts = np.array([[0.0, 0.0], [-1.0, 3.0], [-3.0, -3.0], [3.0, -1.0]])
    paths = trajectories.trajectory(p, optax.adam(0.1), steps=300, start=starts)
    assert paths.shape == (4, 301, 2)
    # each start rolls into the nearest of the four minima
    for path, m in zip(paths, p.minimizers, strict=True):
        np.testing.assert_allclose(path[-1], m, atol=1e-2)
    with pytest.raises(ValueError):
        trajectories.trajectory(p, optax.sgd(0.1), steps=0)
    with pytest.raises(ValueError):
        trajectories.trajectory(p, optax.sgd(0.1), steps=5, start=jnp.zeros(3))


def test_summarize_and_format_table_give_one_row_per_start():
    """A multi-start path ``(B, steps + 1, dim)`` gives one row per start (it crashed)."""
    starts = np.array([[1.0, 1.4], [0.0, 0.0]])
    paths = {"adam": trajectories.trajectory("beale", optax.adam(0.05), 5, start=starts)}
    rows = trajectories.summarize("beale", paths)
    assert [(r["name"], r["start"]) for r in rows] == [("adam", 0), ("adam", 1)]
    for r, path in zip(rows, paths["adam"], strict=True):
        np.testing.assert_array_equal(r["final"], path[-1])
        assert r["value"] == pytest.approx(float(problems.get("beale").value(path[-1])))
    single = trajectories.summarize("beale", {"adam": paths["adam"][1]})
    assert single[0]["start"] is None and single[0]["value"] == rows[1]["value"]
    table = race_mod.format_table("beale", paths)
    assert "adam[0]" in table and "adam[1]" in table
    with pytest.raises(ValueError, match="must have shape"):
        trajectories.summarize("beale", {"bad": np.zeros((2, 2, 3, 2))})


def test_extra_args_transformations_receive_value_fn():
    p = problems.get("rosenbrock")
    ls = optax.chain(
        optax.sgd(1.0), optax.scale_by_backtracking_linesearch(40, decrease_factor=0.5)
    )
    path = trajectories.trajectory(p, ls, steps=50)
    vals = trajectories.path_values(p, {"ls": path})["ls"]
    assert np.all(np.diff(vals) <= 1e-6)  # Armijo: monotone decrease
    assert vals[-1] < vals[0]


def test_race_uses_gradlab_optimizers_and_reaches_minimum():
    from gradlab.optimizers import sgd as gsgd

    opt = race_mod.make_optimizer("momentum", 0.01)
    ref = gsgd.sgd(0.01, momentum=0.9)
    g = jnp.asarray([1.0, -2.0])
    u1, _ = opt.update(g, opt.init(g), g)
    u2, _ = ref.update(g, ref.init(g), g)
    np.testing.assert_allclose(u1, u2)
    paths = race_mod.race("beale", ["momentum", "adam"], steps=300)
    assert set(paths) == {"momentum", "adam"}
    rows = {r["name"]: r for r in trajectories.summarize("beale", paths)}
    assert rows["momentum"]["distance"] < 0.05
    assert rows["adam"]["value"] < 0.05
    np.testing.assert_allclose(paths["adam"][0], problems.get("beale").start)


def test_race_errors():
    with pytest.raises(ValueError):
        race_mod.make_optimizer("bogus", 0.1)
    with pytest.raises(ValueError):
        race_mod.race("beale", ["sgd"], steps=5, learning_rates={"adam": 0.1})
    with pytest.raises(KeyError):
        race_mod.race("nope", ["sgd"], steps=5)
    with pytest.raises(ValueError):
        race_mod.race("beale", [], steps=5)


def test_cli_race_writes_gif_png_and_prints_table(tmp_path, capsys):
    code = cli_main(
        [
            "race",
            "long_valley",
            "--optimizers",
            "sgd,momentum,adam",
            "--steps",
            "40",
            "--frames",
            "8",
            "--lr",
            "sgd=0.05",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for name in ("sgd", "momentum", "adam", "distance", "sgd=0.05"):
        assert name in out
    gif, png = tmp_path / "race_long_valley.gif", tmp_path / "race_long_valley.png"
    assert png.stat().st_size > 1000
    with Image.open(gif) as im:
        assert im.n_frames == 8


def test_cli_race_usage_errors(tmp_path, capsys):
    assert cli_main(["race", "beale", "--optimizers", "sgd,nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli_main(["race", "beale", "--start", "1,2,3", "--out", str(tmp_path)]) == 2
    # A value that is not a number names its option (it said "could not convert string...").
    assert cli_main(["race", "beale", "--start", "1;1.5", "--out", str(tmp_path)]) == 2
    assert "--start expects comma-separated numbers" in capsys.readouterr().err
    assert cli_main(["race", "beale", "--lr", "adam=abc", "--out", str(tmp_path)]) == 2
    assert "--lr: the learning rate in 'adam=abc' is not a number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["race", "not_a_problem"])
    assert not list(tmp_path.iterdir())
    # --out naming a file: a usage error before the race (it crashed after it, exit 1).
    afile = tmp_path / "afile"
    afile.write_text("")
    capsys.readouterr()
    assert cli_main(["race", "beale", "--steps", "5", "--out", str(afile)]) == 2
    captured = capsys.readouterr()
    assert "exists and is not a directory" in captured.err and captured.out == ""


def test_every_race_name_builds_a_gradlab_optimizer_that_descends():
    for name in race_mod.OPTIMIZERS:
        assert race_mod._factory(name).__module__.startswith("gradlab.optimizers")
    paths = race_mod.race("quadratic", race_mod.OPTIMIZERS, steps=20)
    values = trajectories.path_values("quadratic", paths)
    for name, v in values.items():
        assert np.all(np.isfinite(v)), name
        assert v[-1] < v[0], name
