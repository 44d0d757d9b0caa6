"""Smoke tests for examples 02 (learning rate) and 04 (K-means by SGD): --quick runs."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name.replace(".py", ""), EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learning_rate_example(tmp_path, capsys):
    ex = _load("02_learning_rate.py")
    assert ex.main(["--quick", "--out", str(tmp_path)]) == 0  # 1 if a regime mismatched theory
    out = capsys.readouterr().out
    assert "regimes matching theory: 24/24" in out
    assert "x^2: monotone, 9x^2: oscillating, 20x^2: diverging" in out
    for name in ("paths", "regimes", "decay", "rescue"):
        assert (tmp_path / f"02_lr_{name}.png").stat().st_size > 1000
    # the classifier itself, on hand-made sequences
    assert ex.classify([1.0, 0.5, 0.25]) == "monotone"
    assert ex.classify([1.0, -0.5, 0.25]) == "oscillating"
    assert ex.classify([1.0, -1.0, 1.0]) == "bouncing"
    assert ex.classify([1.0, -2.0, 4.0]) == "diverging"
    assert ex.theory(0.5, 2.0) == "one step" and ex.theory(0.8, 2.0) == "oscillating"


def test_kmeans_example(tmp_path, capsys):
    ex = _load("04_kmeans_sgd.py")
    assert ex.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("SGD (1/count)", "mini-batch 32", "batch (Lloyd)", "J/Lloyd"):
        assert name in out
    for name in ("curves", "spread", "clusters"):
        assert (tmp_path / f"04_kmeans_{name}.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["02_learning_rate.py", "04_kmeans_sgd.py"])
def test_examples_have_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        _load(name).main(["--help"])
    assert info.value.code == 0
    assert "--quick" in capsys.readouterr().out
