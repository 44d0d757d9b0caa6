"""Sweep spaces, the results table, safe save/load (no pickle) and the ``gradlab sweep`` command."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from gradlab.status import Status
from gradlab.sweep import SweepResult, choice, loguniform, space, uniform
from gradlab.sweep.command import parse_space


# ------------------------------------------------------------------------------------ spaces
def test_grid_order_and_axes():
    settings = space.grid({"lr": loguniform(1e-3, 1e-1, 3), "m": [0.0, 0.9], "opt": "sgd"})
    assert len(settings) == 6
    np.testing.assert_allclose([s["lr"] for s in settings[::2]], [1e-3, 1e-2, 1e-1])
    assert [s["m"] for s in settings[:2]] == [0.0, 0.9]  # the last axis varies fastest
    assert all(s["opt"] == "sgd" for s in settings)
    np.testing.assert_allclose(uniform(0.0, 1.0, 5).grid(), [0, 0.25, 0.5, 0.75, 1.0])


def test_traced_or_static():
    s = {"lr": [0.1, 0.2], "n": [5, 10], "flag": [True, False], "name": ["a", "b"]}
    settings, traced = space.settings_from(s)
    assert traced == ["lr"] and len(settings) == 16
    assert space.settings_from({"k": choice([5, 10], traced=True)})[1] == ["k"]
    assert space.settings_from({"x": choice([0.1, 0.2], traced=False)})[1] == []
    explicit, traced = space.settings_from([{"lr": 0.1, "n": 2}, {"lr": 0.3, "n": 4}])
    assert traced == ["lr"] and explicit[1] == {"lr": 0.3, "n": 4}


def test_random_search_is_reproducible_and_in_range():
    sp = {"lr": loguniform(1e-4, 1.0), "b": uniform(0.5, 0.9), "c": ["x", "y"]}
    a = space.sample(sp, 50, seed=3)
    assert a == space.sample(sp, 50, seed=3) and a != space.sample(sp, 50, seed=4)
    lrs = np.array([s["lr"] for s in a])
    assert lrs.min() >= 1e-4 and lrs.max() <= 1.0 and np.median(np.log10(lrs)) < -1
    assert {s["c"] for s in a} == {"x", "y"}


def test_loguniform_draws_stay_inside_their_bounds():
    # exp(log(0.1)) is 0.10000000000000002: a draw from loguniform(0.1, 0.1) exceeded high.
    settings, _ = space.settings_from({"lr": loguniform(0.1, 0.1)}, samples=4)
    assert [s["lr"] for s in settings] == [0.1] * 4
    settings, _ = space.settings_from({"lr": loguniform(1e-3, 3.0)}, samples=200)
    assert all(1e-3 <= s["lr"] <= 3.0 for s in settings)


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: loguniform(0.0, 1.0, 3), ValueError),
        (lambda: loguniform(1.0, 0.1, 3), ValueError),
        (lambda: loguniform(1e-3, 1.0, 0), ValueError),
        (lambda: uniform(0.0, float("nan"), 3), ValueError),
        (lambda: uniform("a", 1.0, 3), TypeError),
        (lambda: choice([]), ValueError),
        (lambda: choice(["a", "b"], traced=True), TypeError),
        (lambda: space.grid({"lr": loguniform(1e-3, 1.0)}), ValueError),  # no n for a grid
        (lambda: space.grid({"not a name": [1.0]}), ValueError),
        (lambda: space.settings_from([{"a": 1.0}, {"b": 2.0}]), ValueError),
    ],
)
def test_bad_spaces(make, error):
    with pytest.raises(error):
        make()


# ------------------------------------------------------------------------------------ results
def _result(target=("val_accuracy", 0.9)):
    rng = np.random.default_rng(0)
    settings = [{"lr": 0.01, "opt": "sgd"}, {"lr": 0.1, "opt": "sgd"}, {"lr": 1.0, "opt": "sgd"}]
    steps = np.arange(5) * 10
    loss = np.exp(-np.outer(rng.uniform(0.1, 0.5, 6), steps / 10)).astype(np.float32)
    acc = (1 - loss).astype(np.float32)
    status = np.full(6, int(Status.OK), np.int32)
    status[4:] = int(Status.DIVERGED)
    loss[4:, 3:] = np.nan
    acc[4:, 3:] = np.nan
    status[1] = int(Status.OK)
    return SweepResult(
        names=["lr", "opt"],
        settings=settings,
        seeds=[0, 1],
        steps=steps,
        curves={"val_loss": loss, "val_accuracy": acc},
        status=status,
        diverged_at=np.where(status == int(Status.DIVERGED), 25, -1),
        messages=[""] * 6,
        primary="val_loss",
        target=target,
        info={"task": "toy", "groups": [{"strategy": "vmap"}]},
    )


def test_table_values_and_rendering():
    res = _result()
    table = res.table()
    assert [r["status"] for r in table.rows] == ["ok", "ok", "diverged"]
    np.testing.assert_allclose(
        table.rows[0]["final_val_loss"], res.curves["val_loss"][:2, -1].mean()
    )
    np.testing.assert_allclose(
        table.rows[0]["best_val_loss"], res.curves["val_loss"][:2].min(1).mean()
    )
    hit = res.steps_to_target()
    assert hit.shape == (6,) and np.all(hit[4:] == -1)
    text = str(table).splitlines()
    assert text[0].split()[:2] == ["lr", "opt"] and len(text) == 2 + 3
    rule = text[1]
    assert set(rule) == {"-", " "} and all(len(line) <= len(rule) for line in text)
    # every cell of a column ends (numbers) or starts (text) where its rule does
    ends = [
        i + 1
        for i in range(len(rule))
        if rule[i] == "-" and (i + 1 == len(rule) or rule[i + 1] == " ")
    ]
    assert all(line[ends[2] - 1] != " " for line in text[2:])  # final_val_loss, right-aligned
    per_run = res.table(per_seed=True, sort_by="final_val_loss")
    assert len(per_run) == 6 and per_run.rows[-1]["status"] == "diverged"
    assert res.best["lr"] in (0.01, 0.1) and res.best["status"] == "ok"


def test_full_table_has_the_best_value_of_every_metric_accuracies_included():
    """``table(full=True)`` promised the best accuracy too; it used to give losses only."""
    res = _result()
    acc = res.curves["val_accuracy"]
    assert "best_val_accuracy" not in res.table().columns  # primary only by default
    full = res.table(full=True)
    assert full.columns[2:] == [
        "final_val_loss", "best_val_loss", "final_val_accuracy", "best_val_accuracy",
        "val_loss_std", "steps_to_target", "status",
    ]  # fmt: skip
    np.testing.assert_allclose(full.rows[0]["best_val_accuracy"], acc[:2].max(1).mean())
    # a diverged setting's best is the highest value before the divergence
    np.testing.assert_allclose(full.rows[2]["best_val_accuracy"], acc[4:, :3].max(1).mean())
    assert all(r["best_val_accuracy"] >= r["final_val_accuracy"] for r in full.rows[:2])
    ranked = res.table(full=True, per_seed=True, sort_by="best_val_accuracy")
    best = [r["best_val_accuracy"] for r in ranked.rows]
    assert best == sorted(best, reverse=True)  # accuracies rank descending


def test_to_pandas_when_available():
    pd = pytest.importorskip("pandas")
    frame = _result().to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame["lr"]) == [0.01, 0.1, 1.0]


def test_save_load_round_trip(tmp_path):
    res = _result()
    path = res.save(tmp_path / "sweep")
    assert path.endswith(".npz")
    back = SweepResult.load(path)
    assert back.settings == res.settings and back.seeds == res.seeds and back.names == res.names
    assert back.target == res.target and back.primary == res.primary and back.info == res.info
    for k in res.curves:
        np.testing.assert_array_equal(back.curves[k], res.curves[k])
    np.testing.assert_array_equal(back.status, res.status)
    np.testing.assert_array_equal(back.diverged_at, res.diverged_at)
    assert str(back.table()) == str(res.table())


def test_save_load_keeps_tuple_values_tuples(tmp_path):
    # JSON has no tuples: a static axis of (b1, b2) pairs came back as lists (table text too).
    res = _result()
    res.settings = [dict(s, betas=(0.9, 0.999), nested={"pair": (1, 2)}) for s in res.settings]
    res.info = dict(res.info, widths=(64, 64))
    back = SweepResult.load(res.save(tmp_path / "tuples"))
    assert back.settings == res.settings and back.info == res.info
    assert isinstance(back.settings[0]["betas"], tuple)


def test_format_1_files_read_code_2_as_diverged(tmp_path):
    """Format 1 stored diverged runs as ``Status.NON_FINITE`` (2): they load as ``DIVERGED``."""
    assert int(Status.DIVERGED) == 9 and Status.DIVERGED.label == "diverged"
    res = _result()
    path = res.save(tmp_path / "new")
    with np.load(path, allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    manifest = json.loads(files["manifest"].tobytes().decode("utf-8"))
    assert manifest["version"] == 2
    manifest["version"] = 1
    files["manifest"] = np.frombuffer(json.dumps(manifest).encode("utf-8"), dtype=np.uint8)
    files["status"] = np.where(files["status"] == int(Status.DIVERGED), 2, files["status"])
    old = tmp_path / "old.npz"
    np.savez(old, **files)
    back = SweepResult.load(old)
    np.testing.assert_array_equal(back.status, res.status)
    assert back.labels() == ["ok"] * 4 + ["diverged"] * 2
    assert [r["status"] for r in back.table().rows] == ["ok", "ok", "diverged"]
    # a format 2 file keeps its codes as written
    np.testing.assert_array_equal(SweepResult.load(path).status, res.status)


class _Boom:
    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_crafted_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    boom = _Boom()
    boom.marker = str(marker)
    raw = tmp_path / "evil.npz"
    raw.write_bytes(pickle.dumps(boom))
    with pytest.raises(ValueError):
        SweepResult.load(raw)
    # an npz whose member is a pickled object array
    buf = io.BytesIO()
    np.save(buf, np.array([boom], dtype=object), allow_pickle=True)
    evil = tmp_path / "evil2.npz"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("manifest.npy", buf.getvalue())
    with pytest.raises(ValueError):
        SweepResult.load(evil)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ command
def test_parse_space():
    sp = parse_space(["lr=loguniform:1e-3:1:4", "momentum=0,0.9", "nesterov=true,false"])
    assert set(sp) == {"learning_rate", "momentum", "nesterov"}
    assert sp["momentum"].values == [0.0, 0.9] and sp["momentum"].traced
    assert sp["nesterov"].values == [True, False] and not sp["nesterov"].traced
    with pytest.raises(ValueError):
        parse_space(["lr"])


def test_cli_smoke(tmp_path, capsys):
    from gradlab.cli import main

    out = tmp_path / "out"
    code = main(
        ["sweep", "--steps", "20", "--eval-every", "10", "--seeds", "1", "--widths", "8",
         "--space", "lr=0.1,1e6", "--space", "momentum=0.9", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert "diverged" in text and "ok" in text and "best" in text
    for name in ("table.txt", "sweep.npz", "sweep.png"):
        assert (out / name).stat().st_size > 0
    res = SweepResult.load(out / "sweep.npz")
    assert res.labels() == ["ok", "diverged"]


def test_cli_errors(tmp_path, capsys):
    from gradlab.cli import main

    assert main(["sweep", "--optimizer", "no_such_opt", "--out", str(tmp_path)]) == 2
    assert main(["sweep", "--space", "not_an_arg=1.0", "--out", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err
    # A sampled range without a count and without --samples has no grid: a usage error.
    assert main(["sweep", "--space", "lr=loguniform:1e-3:1e-1", "--out", str(tmp_path)]) == 2
    assert "no grid points" in capsys.readouterr().err


# Fast options for command runs that train (a few steps of a tiny MLP, one seed).
_QUICK = ["--steps", "10", "--eval-every", "10", "--seeds", "1", "--widths", "8"]
_QUICK += ["--no-plot", "--no-progress"]


def test_cli_refuses_a_missing_required_argument_before_training(tmp_path, capsys):
    from gradlab.cli import main

    out = tmp_path / "out"
    # adam requires learning_rate: a usage error naming it, before anything is trained.
    code = main(["sweep", "--optimizer", "adam", "--space", "b1=0.8,0.9", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and "learning_rate" in captured.err
    assert "settings x" not in captured.out and not out.exists()


def test_cli_engine_sees_the_factorys_signature(tmp_path, capsys, monkeypatch):
    """Without the command's own check, the engine's signature check still refuses the space:
    the command's wrapper keeps the factory's signature (it used to hide it behind ``**hp``)."""
    from gradlab.cli import main
    from gradlab.sweep import command

    monkeypatch.setattr(command, "check_arguments", lambda *args: None)
    code = main(["sweep", "--optimizer", "adam", "--space", "b1=0.9", "--out", str(tmp_path)])
    assert code == 2 and "learning_rate" in capsys.readouterr().err


def test_cli_default_space_follows_the_optimizer(tmp_path, capsys):
    from gradlab.cli import main
    from gradlab.sweep.command import DEFAULT_SPACE, default_space, resolve_optimizer

    assert default_space(resolve_optimizer("sgd")) == DEFAULT_SPACE
    assert default_space(resolve_optimizer("rmsprop")) == DEFAULT_SPACE  # takes momentum
    assert default_space(resolve_optimizer("adam")) == ["lr=loguniform:1e-3:3:8"]
    assert default_space(lambda **kw: None) == DEFAULT_SPACE
    assert default_space(lambda: None) == []
    # `gradlab sweep --optimizer adam` alone sweeps the learning rate only (it used to fail:
    # the default space was SGD's, with a momentum axis that adam does not take).
    code = main(["sweep", "--optimizer", "adam", *_QUICK, "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    res = SweepResult.load(tmp_path / "out" / "sweep.npz")
    assert res.names == ["learning_rate"] and len(res.settings) == 8


def test_cli_refuses_an_axis_given_twice(tmp_path, capsys):
    from gradlab.cli import main

    with pytest.raises(ValueError, match="twice"):
        parse_space(["lr=0.1", "learning_rate=0.2"])  # an alias and its name are one axis
    for second in ("lr=0.2", "learning_rate=0.2"):
        code = main(["sweep", "--space", "lr=0.1", "--space", second, "--out", str(tmp_path)])
        assert code == 2 and "learning_rate is given twice" in capsys.readouterr().err


def test_cli_says_why_runs_are_invalid(tmp_path, capsys):
    from gradlab.cli import main

    code = main(
        ["sweep", "--space", "lr=-0.1,0.1", "--space", "mu=0.9", *_QUICK,
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert "1 run(s) invalid" in text and "learning_rate must be in [0, inf)" in text


def test_cli_checks_out_before_training(tmp_path, capsys):
    from gradlab.cli import main

    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    for out in (a_file, a_file / "below"):  # a file in the way, or in the path
        code = main(["sweep", *_QUICK, "--out", str(out)])
        captured = capsys.readouterr()
        assert code == 2 and "--out" in captured.err, captured.err
        assert "settings x" not in captured.out  # refused before the sweep ran
    assert a_file.read_text() == "keep me"
    blocked = tmp_path / "blocked"
    (blocked / "sweep.npz").mkdir(parents=True)
    assert main(["sweep", *_QUICK, "--out", str(blocked)]) == 2
    assert "sweep.npz is a directory" in capsys.readouterr().err


def test_python_dash_m_gradlab_is_the_command_line():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "gradlab", "sweep", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr
    assert "--optimizer" in out.stdout and "--space" in out.stdout


def _loss_result(loss, status=None):
    """Two settings of one axis, one seed, the given (2, T) train_loss curves."""
    loss = np.asarray(loss, np.float32)
    status = np.full(2, int(Status.OK), np.int32) if status is None else np.asarray(status)
    return SweepResult(
        names=["lr"],
        settings=[{"lr": 0.1}, {"lr": 0.5}],
        seeds=[0],
        steps=np.arange(loss.shape[1]) * 5,
        curves={"train_loss": loss},
        status=status,
        diverged_at=np.where(status == int(Status.DIVERGED), 5, -1),
        messages=[""] * 2,
        primary="train_loss",
        target=None,
        info={"task": "toy", "groups": [{"strategy": "vmap"}]},
    )


def test_plot_of_a_negative_loss_shows_every_run_from_its_start(tmp_path):
    # The clip above the start (top * 1.5) was below a negative start: the first values were
    # cut off, and with curves above 1.5 x start the axis came out inverted.
    res = _loss_result([[-1.22, -1.32, -1.43, -1.60], [-1.22, -1.66, -1.83, -1.86]])
    fig = res.plot(str(tmp_path / "neg.png"))
    bottom, top = fig.axes[0].get_ylim()
    assert bottom <= -1.86 and top >= -1.22 and bottom < top


def test_plot_of_a_one_axis_sweep_that_all_diverged_marks_them_visibly(tmp_path):
    # Every final value NaN: the markers went to y = 0 on a log axis and were dropped.
    diverged = np.full(2, int(Status.DIVERGED), np.int32)
    res = _loss_result([[2.5, 40.0, np.nan], [2.5, 90.0, np.nan]], diverged)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = res.plot(str(tmp_path / "div.png"))
    markers = [ln for ln in fig.axes[1].get_lines() if ln.get_label() == "diverged / invalid"]
    assert markers and np.all(np.asarray(markers[0].get_ydata()) > 0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--optimizer", "sweep"], "unknown optimizer 'sweep'"),
        (["--optimizer", "chain"], "unknown optimizer 'chain'"),
        (["--optimizer", "exponential_decay"], "unknown optimizer 'exponential_decay'"),
        (["--space", "lr=1e-3:1e-1"], "neither a list of values nor loguniform"),
        (["--space", "lr=loguniform:"], "loguniform needs LOW:HIGH[:N]"),
        (["--space", "lr=loguniform"], "loguniform needs LOW:HIGH[:N]"),
        (["--samples", "0"], "--samples must be >= 1, got 0"),
        (["--seeds", "0"], "--seeds must be >= 1, got 0"),
    ],
)
def test_cli_usage_errors_come_before_any_work(argv, message, tmp_path, capsys):
    # These ran a sweep of invalid rows (exit 0), or printed the header before failing.
    from gradlab.cli import main

    assert main(["sweep", *argv, "--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_cli_a_sweep_whose_every_setting_is_refused_fails(tmp_path, capsys):
    from gradlab.cli import main

    assert main(["sweep", "--space", "lr=abc", *_QUICK, "--out", str(tmp_path)]) == 1
    assert "every setting was refused by sgd" in capsys.readouterr().err
