"""examples/07_rosenbrock_methods.py runs end to end (quick mode) and writes its figure."""

import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "07_rosenbrock_methods.py")


def _load():
    spec = importlib.util.spec_from_file_location("rosenbrock_methods_example", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_runs_quick_and_writes_plot(tmp_path, capsys):
    example = _load()
    assert example.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "rosenbrock_methods.png").stat().st_size > 10_000
    for name in ("BFGS", "steepest descent"):
        assert name in out
    # BFGS converges within the quick budget (steepest descent, zig-zagging, does not).
    bfgs_line = next(line for line in out.splitlines() if line.startswith("BFGS "))
    assert bfgs_line.rstrip().endswith("converged")


def test_example_rejects_unknown_flags():
    with pytest.raises(SystemExit):
        _load().main(["--bogus"])
