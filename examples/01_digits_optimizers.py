"""Optimizer comparison on the digits MLP (Kingma & Ba 2015, Fig. 2, on embedded data).

Trains the same multilayer perceptron on scikit-learn's 8x8 digits with SGD, momentum, Nesterov,
AdaGrad, RMSProp, AdaDelta, Adam (mini-batches) and Rprop (full batch, the regime it was designed
for), and plots the training loss and the validation accuracy per epoch.

    python examples/01_digits_optimizers.py            # full run (about a minute on a CPU)
    python examples/01_digits_optimizers.py --quick    # smoke test: Adam and Rprop, 2 epochs

Prints a table (final training loss, validation accuracy) and writes
``<out>/01_digits_optimizers.png`` and ``<out>/01_digits_optimizers.json``.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from flax import nnx
from matplotlib.figure import Figure

from gradlab.lab import example_parser, plots, positive_int
from gradlab.lab.data import load_digits
from gradlab.lab.models import MLP
from gradlab.lab.train import train
from gradlab.optimizers.adaptive import adadelta, adagrad, adam, rmsprop
from gradlab.optimizers.rprop import rprop
from gradlab.optimizers.sgd import sgd

# name -> (optimizer, batch size; None: the --batch-size option); learning rates picked by a
# coarse search on digits. Transformations are immutable, so one object serves every run (and
# repeated runs reuse the compiled epoch).
OPTIMIZERS = {
    "sgd": (sgd(0.05), None),
    "momentum": (sgd(0.01, momentum=0.9), None),
    "nesterov": (sgd(0.01, momentum=0.9, nesterov=True), None),
    "adagrad": (adagrad(0.01), None),
    "rmsprop": (rmsprop(1e-3), None),
    "adadelta": (adadelta(1.0), None),
    "adam": (adam(1e-3), None),
    "rprop": (rprop(1e-3), "all"),
}
QUICK_OPTIMIZERS = ("adam", "rprop")


def run(
    names, *, epochs: int, widths, batch_size: int, seed: int = 0, progress: bool = False
) -> dict:
    """Train one MLP per optimizer; returns ``{name: (History, seconds)}``."""
    data = load_digits(seed=seed)
    results = {}
    for name in names:
        optimizer, bs = OPTIMIZERS[name]
        model = MLP(data.num_features, widths, data.num_classes, rngs=nnx.Rngs(seed))
        t0 = time.perf_counter()
        r = train(
            model,
            optimizer,
            data,
            epochs=epochs,
            batch_size=bs or batch_size,
            seed=seed,
            progress=progress,
        )
        results[name] = (r.history, time.perf_counter() - t0)
    return results


def plot(results, path: str) -> None:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for name, (h, _) in results.items():
        style = "--" if name == "rprop" else "-"
        ax1.plot(h.epoch, h.train_loss, style, label=name)
        ax2.plot(h.epoch, h.val_acc, style, label=name)
    ax1.set(xlabel="epoch", ylabel="training loss (cross-entropy)", yscale="log")
    ax1.set_title("MLP on digits: training loss")
    ax2.set(xlabel="epoch", ylabel="validation accuracy", ylim=(0.8, 1.0))
    ax2.set_title("validation accuracy (Rprop: full batch)")
    ax1.legend(ncol=2, fontsize=8)
    ax2.grid(alpha=0.3)
    ax1.grid(alpha=0.3)
    plots.save_figure(fig, path, dpi=110)


def main(argv=None) -> dict:
    p = example_parser(__doc__, "Adam and Rprop, 2 epochs")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--optimizers", default=None, help="comma-separated subset of names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)

    names = args.optimizers.split(",") if args.optimizers else None
    if names is None:
        names = list(QUICK_OPTIMIZERS) if args.quick else list(OPTIMIZERS)
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        p.error(f"unknown optimizers {unknown}; choose from {sorted(OPTIMIZERS)}")
    epochs = args.epochs if args.epochs is not None else (2 if args.quick else 40)
    widths = [256, 256]
    results = run(
        names,
        epochs=epochs,
        widths=widths,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=args.progress,
    )
    os.makedirs(args.out, exist_ok=True)
    print(f"MLP {widths} on digits, {epochs} epochs, mini-batch {args.batch_size} (rprop: full)")
    print(f"{'optimizer':<10} {'train loss':>11} {'val acc':>8} {'best val':>9} {'time s':>7}")
    summary = {}
    for name, (h, secs) in results.items():
        summary[name] = {
            "final_train_loss": float(h.train_loss[-1]),
            "final_val_acc": float(h.val_acc[-1]),
            "best_val_acc": float(np.nanmax(h.val_acc)),
            "seconds": secs,
            "history": h.as_dict(),
        }
        print(
            f"{name:<10} {h.train_loss[-1]:>11.4g} {h.val_acc[-1]:>8.4f} "
            f"{np.nanmax(h.val_acc):>9.4f} {secs:>7.1f}"
        )
    plot(results, os.path.join(args.out, "01_digits_optimizers.png"))
    with open(os.path.join(args.out, "01_digits_optimizers.json"), "w") as f:
        json.dump(summary, f)
    return summary


if __name__ == "__main__":
    main()
