r"""Sweep the learning rate x the learning-rate schedule on digits.

Two kinds of axes meet here:

* the **schedule family** (constant, step/exponential decay, cosine, warm-up + cosine) is a
  *static* axis: each family is a different program, so gradlab compiles one program per family
  and vmaps the learning rates inside it;
* the schedule's **numbers** are *traced* axes like any optimizer hyperparameter: part 2 sweeps
  the peak learning rate x the decay rate of
  :math:`\eta_t = \eta_0\,\lambda^{t/k}` in a single program (gradlab's schedules accept traced
  arguments; optax's ``exponential_decay`` checks ``decay_rate`` with Python control flow and
  cannot be vmapped over it).

Run: ``python examples/09_sweep_lr_schedule.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import os

from gradlab import schedules
from gradlab.optimizers.sgd import sgd
from gradlab.sweep import SweepResult, loguniform, sweep, tasks


def make_optimizer(steps: int):
    """``(learning_rate, schedule) -> sgd(schedule(learning_rate), momentum=0.9)``."""

    def optimizer(learning_rate, schedule):
        if schedule == "constant":
            lr = learning_rate
        elif schedule == "exponential":
            lr = schedules.exponential_decay(learning_rate, steps // 4, 0.3)
        elif schedule == "cosine":
            lr = schedules.cosine_decay_schedule(learning_rate, steps)
        elif schedule == "warmup_cosine":
            lr = schedules.warmup_cosine_decay_schedule(0.0, learning_rate, steps // 10, steps)
        else:
            raise ValueError(f"unknown schedule {schedule!r}")
        return sgd(lr, momentum=0.9)

    return optimizer


def decay_optimizer(steps: int):
    """``(learning_rate, decay) -> sgd(exponential_decay(learning_rate, steps/4, decay))``."""

    def optimizer(learning_rate, decay):
        return sgd(schedules.exponential_decay(learning_rate, steps // 4, decay), momentum=0.9)

    return optimizer


def main(argv: list[str] | None = None) -> tuple[SweepResult, SweepResult]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast grid (smoke test)")
    parser.add_argument("--out", default="out", help="directory for the outputs (%(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        families, n_lr, seeds, steps, widths = ["constant", "cosine"], 3, 1, 40, (32,)
        decays = [0.1, 0.9]
    else:
        families = ["constant", "exponential", "cosine", "warmup_cosine"]
        n_lr, seeds, steps, widths = 8, 2, 600, (64,)
        decays = [0.03, 0.1, 0.3, 0.6, 0.9]
    task = tasks.mlp_classifier("digits", widths, batch_size=128)
    os.makedirs(args.out, exist_ok=True)

    # 1. learning rate x schedule family (one compiled program per family) ---------------------
    space = {"learning_rate": loguniform(3e-3, 3.0, n_lr), "schedule": families}
    by_family = sweep(make_optimizer(steps), space, seeds=seeds, task=task, steps=steps)
    print(by_family.table(sort_by="final_val_loss"))
    print(f"\ncompiled programs: {len(by_family.info['groups'])} (one per schedule family)")
    for fam in families:
        rows = [r for r in by_family.table().rows if r["schedule"] == fam and r["status"] == "ok"]
        if rows:
            best = min(rows, key=lambda r: r["final_val_loss"])
            print(
                f"  {fam:>14}: best learning_rate {best['learning_rate']:.3g} -> val loss "
                f"{best['final_val_loss']:.4f}, accuracy {best['final_val_accuracy']:.3f}"
            )
    by_family.plot(os.path.join(args.out, "09_sweep_lr_schedule.png"))

    # 2. peak learning rate x decay rate (both traced: one program) ----------------------------
    space = {"learning_rate": loguniform(3e-3, 3.0, n_lr), "decay": decays}
    by_decay = sweep(decay_optimizer(steps), space, seeds=seeds, task=task, steps=steps)
    print()
    print(by_decay.table(sort_by="final_val_loss"))
    print(f"\ncompiled programs: {len(by_decay.info['groups'])} (learning rate and decay traced)")
    by_decay.plot(os.path.join(args.out, "09_sweep_lr_decay.png"))
    print(f"wrote {args.out}/09_sweep_lr_schedule.png and 09_sweep_lr_decay.png")
    return by_family, by_decay


if __name__ == "__main__":
    main()
