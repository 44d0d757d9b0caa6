r"""Sweep SGD's learning rate x momentum on digits: one compiled program, one table.

Every (learning rate, momentum, seed) trains the same Flax MLP on scikit-learn's embedded 8x8
digits; gradlab vmaps the numeric hyperparameters, so the whole grid is a single compiled
program. Runs that blow up are frozen and reported as ``diverged`` without disturbing the rest.

The textbook lesson it checks: with momentum :math:`\mu` the steady-state step is
:math:`\eta / (1 - \mu)` (the velocity sums a geometric series of gradients), so the best
learning rate with :math:`\mu = 0.9` should be roughly ten times smaller than without momentum,
and the largest stable learning rate shrinks by about the same factor.

Run: ``python examples/08_sweep_lr_momentum.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np

from gradlab.optimizers.sgd import sgd
from gradlab.sweep import SweepResult, loguniform, sweep, tasks


def optimizer(learning_rate, momentum):
    """gradlab SGD with heavy-ball momentum (``momentum=0.0`` is plain SGD)."""
    return sgd(learning_rate, momentum=momentum)


def best_lr(result: SweepResult, momentum: float) -> float | None:
    """The learning rate with the lowest mean final validation loss at ``momentum``."""
    rows = [r for r in result.table().rows if r["momentum"] == momentum and r["status"] == "ok"]
    rows = [r for r in rows if math.isfinite(r["final_val_loss"])]
    if not rows:
        return None
    return min(rows, key=lambda r: r["final_val_loss"])["learning_rate"]


def largest_stable_lr(result: SweepResult, momentum: float) -> float | None:
    """The largest learning rate at ``momentum`` that ends below the starting validation loss
    (every seed finite): larger ones diverged or blew up."""
    start = float(np.nanmean(result.curves["val_loss"][:, 0]))
    ok = [
        r["learning_rate"]
        for r in result.table().rows
        if r["momentum"] == momentum and r["status"] == "ok" and r["final_val_loss"] < start
    ]
    return max(ok) if ok else None


def main(argv: list[str] | None = None) -> SweepResult:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast grid (smoke test)")
    parser.add_argument("--out", default="out", help="directory for the outputs (%(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        space = {"learning_rate": loguniform(1e-2, 10.0, 4), "momentum": [0.0, 0.9]}
        seeds, steps, widths = 1, 40, (32,)
    else:
        space = {"learning_rate": loguniform(1e-3, 10.0, 13), "momentum": [0.0, 0.5, 0.9, 0.99]}
        seeds, steps, widths = 3, 500, (64,)

    task = tasks.mlp_classifier("digits", widths, batch_size=128)
    result = sweep(optimizer, space, seeds=seeds, task=task, steps=steps, progress=None)
    print(result.table())
    best = result.best
    if best is not None:
        print(
            f"\nbest: learning_rate={best['learning_rate']:.3g}, momentum={best['momentum']} "
            f"-> val loss {best['final_val_loss']:.4f}, val accuracy "
            f"{best['final_val_accuracy']:.3f}"
        )
    b0, b9 = best_lr(result, 0.0), best_lr(result, 0.9)
    s0, s9 = largest_stable_lr(result, 0.0), largest_stable_lr(result, 0.9)
    if b0 and b9:
        print(
            f"best lr without momentum {b0:.3g}, with momentum 0.9 {b9:.3g}: ratio {b0 / b9:.1f} "
            "(theory: about 1 / (1 - 0.9) = 10)"
        )
    if s0 and s9:
        print(f"largest stable lr: {s0:.3g} without momentum, {s9:.3g} with momentum 0.9")
    os.makedirs(args.out, exist_ok=True)
    result.plot(os.path.join(args.out, "08_sweep_lr_momentum.png"))
    result.save(os.path.join(args.out, "08_sweep_lr_momentum.npz"))
    print(f"wrote {args.out}/08_sweep_lr_momentum.png and .npz")
    return result


if __name__ == "__main__":
    main()
