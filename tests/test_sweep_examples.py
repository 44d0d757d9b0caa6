"""Smoke tests of the sweep examples (``--quick``) and of the sweep benchmark's kernel count."""

import importlib.util
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(folder, name):
    path = os.path.join(ROOT, folder, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"gradlab_{folder}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_08_sweep_lr_momentum_quick(tmp_path, capsys):
    ex = _load("examples", "08_sweep_lr_momentum")
    res = ex.main(["--quick", "--out", str(tmp_path)])
    # effective learning rate: (lr, momentum 0.9) trains like (10 lr, no momentum)
    pairs = ex.effective_lr_pairs(res, 0.9)
    assert [round(p[0], 6) for p in pairs] == [0.01, 0.1, 1.0]
    lr, with_mu, without = pairs[0]
    assert abs(with_mu - without) / without < 0.3
    assert len(res.settings) == 8 and res.names == ["learning_rate", "momentum"]
    labels = res.labels()
    assert "ok" in labels and "diverged" in labels  # lr = 10 diverges, the small ones do not
    assert res.best is not None and res.best["status"] == "ok"
    assert (tmp_path / "08_sweep_lr_momentum.png").stat().st_size > 0
    assert "best" in capsys.readouterr().out


def test_09_sweep_lr_schedule_quick(tmp_path):
    by_family, by_decay = _load("examples", "09_sweep_lr_schedule").main(
        ["--quick", "--out", str(tmp_path)]
    )
    assert len(by_family.info["groups"]) == 2  # one program per schedule family
    assert len(by_decay.info["groups"]) == 1  # learning rate and decay traced together
    assert by_decay.info["traced"] == ["learning_rate", "decay"]
    finals = by_family.curves["val_loss"][:, -1]
    assert np.isfinite(finals).sum() >= 4
    assert (tmp_path / "09_sweep_lr_schedule.png").stat().st_size > 0


def test_benchmark_kernel_count_smoke():
    """``benchmarks/sweep.py --kernels``: the step loop bodies are found and counted."""
    from gradlab.sweep import tasks

    bench = _load("benchmarks", "sweep")
    task = tasks.mlp_classifier("moons", (8,), batch_size=16, target_accuracy=None)
    ops = bench.step_kernels(task, 4)
    assert set(ops) == {"gradlab", "optax loop"}
    # one training step: at least the forward and backward matmuls, fused or not; the engine
    # also computes the loss value the divergence rule records
    for counts in ops.values():
        assert counts["fusion"] + counts["dot"] + counts["custom-call"] >= 4
    assert ops["gradlab"]["fusion"] >= ops["optax loop"]["fusion"]
