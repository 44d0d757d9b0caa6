r"""Sweep SGD's learning rate x momentum on digits: one compiled program, one table.

Every (learning rate, momentum, seed) trains the same Flax MLP on scikit-learn's embedded 8x8
digits; gradlab vmaps the numeric hyperparameters, so the whole grid is a single compiled
program. Runs that blow up (a training loss that turns non-finite or climbs above 100x its
first value) are frozen and reported as ``diverged`` without disturbing the rest.

The textbook lesson it checks: with momentum :math:`\mu` the velocity sums a geometric series
of past gradients, so while the gradient changes slowly the step is
:math:`\eta / (1 - \mu)` times the gradient -- the *effective learning rate*. Below the
stability limit, SGD with :math:`(\eta, \mu = 0.9)` should therefore train like plain SGD with
:math:`10\eta`: the grid is log-spaced with three points per decade, so every such pair is in
it, and the script prints their final training losses side by side.

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


def effective_lr_pairs(result: SweepResult, momentum: float = 0.9) -> list[tuple]:
    """``(lr, loss with momentum, loss without momentum at lr / (1 - momentum))`` for every
    learning rate whose partner is in the grid (final training loss, mean over seeds)."""
    rows = result.table().rows
    plain = {r["learning_rate"]: r["final_train_loss"] for r in rows if r["momentum"] == 0.0}
    out = []
    for r in rows:
        if r["momentum"] != momentum:
            continue
        target = r["learning_rate"] / (1.0 - momentum)
        match = [lr for lr in plain if math.isclose(lr, target, rel_tol=1e-3)]
        if match:
            out.append((r["learning_rate"], r["final_train_loss"], plain[match[0]]))
    return out


def largest_stable_lr(result: SweepResult, momentum: float) -> float | None:
    """The largest learning rate at ``momentum`` whose every seed is ``ok`` and ends below the
    starting validation loss: larger ones diverged."""
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
    pairs = effective_lr_pairs(result, 0.9)
    if pairs:
        print("\neffective learning rate lr / (1 - momentum): final train loss")
        print(f"{'lr':>9} {'momentum 0.9':>13} {'10 lr, no momentum':>19}")
        for lr, with_mu, without in pairs:
            print(f"{lr:>9.3g} {with_mu:>13.4g} {without:>19.4g}")
        close = [
            abs(a - b) / b
            for _, a, b in pairs
            if math.isfinite(a) and math.isfinite(b) and b > 1e-2
        ]
        if close:
            print(
                f"median relative difference where both train (loss > 0.01): "
                f"{100 * float(np.median(close)):.1f}%"
            )
    s0, s9 = largest_stable_lr(result, 0.0), largest_stable_lr(result, 0.9)
    if s0 and s9:
        print(f"largest stable lr: {s0:.3g} without momentum, {s9:.3g} with momentum 0.9")
    os.makedirs(args.out, exist_ok=True)
    result.plot(os.path.join(args.out, "08_sweep_lr_momentum.png"))
    result.save(os.path.join(args.out, "08_sweep_lr_momentum.npz"))
    print(f"wrote {args.out}/08_sweep_lr_momentum.png and .npz")
    return result


if __name__ == "__main__":
    main()
