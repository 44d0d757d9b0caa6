"""Batch normalisation and dropout: with vs without, at higher learning rates, train/val gap.

The same MLP (three hidden ReLU layers of 256 units) is trained on the digits with plain SGD at
several learning rates, in four configurations: plain, batch normalisation, dropout, and both.
Training uses a deliberately small training split (half of the digits) so over-fitting shows.

* Batch normalisation (Ioffe & Szegedy, 2015) normalises each hidden pre-activation with the
  batch mean and variance during training (running averages at evaluation), which keeps the
  layers well scaled and lets larger learning rates train.
* Dropout (Srivastava et al., 2014) zeroes each hidden unit with probability ``p`` during
  training (scaling the others by :math:`1/(1-p)`), a regulariser that narrows the gap between
  training and validation accuracy.

    python examples/06_batchnorm_dropout.py [--quick] [--out DIR]

Prints a table (final train/validation accuracy, gap, status per configuration and learning
rate) and writes ``<out>/06_batchnorm_dropout.png``.
"""

from __future__ import annotations

import json
import os

import numpy as np
from flax import nnx
from matplotlib.figure import Figure

from gradlab.lab import example_parser, plots, positive_floats, positive_int
from gradlab.lab.data import load_digits
from gradlab.lab.models import MLP
from gradlab.lab.train import train
from gradlab.optimizers.sgd import sgd

CONFIGS = {
    "plain": {"batch_norm": False, "dropout": 0.0},
    "batch norm": {"batch_norm": True, "dropout": 0.0},
    "dropout 0.5": {"batch_norm": False, "dropout": 0.5},
    "BN + dropout": {"batch_norm": True, "dropout": 0.5},
}
QUICK_CONFIGS = ("BN + dropout",)


def main(argv=None) -> dict:
    p = example_parser(__doc__, "BN + dropout, 1 learning rate, 1 epoch")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument(
        "--lrs", type=positive_floats, default=None, help="comma-separated learning rates"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 40)
    lrs = args.lrs if args.lrs is not None else ([0.1] if args.quick else [0.01, 0.1, 0.5, 2.0])
    widths = [256, 256] if args.quick else [256, 256, 256]
    data = load_digits(val_fraction=0.5, seed=args.seed)
    configs = {k: CONFIGS[k] for k in QUICK_CONFIGS} if args.quick else CONFIGS

    results: dict = {}
    for name, cfg in configs.items():
        for lr in lrs:
            model = MLP(
                data.num_features, widths, data.num_classes, rngs=nnx.Rngs(args.seed), **cfg
            )
            r = train(
                model, sgd(lr), data, epochs=epochs, batch_size=32, seed=args.seed, progress=False
            )
            h = r.history
            ok = r.status != "non_finite"  # a diverged run has no meaningful accuracy
            nan = float("nan")
            results[(name, lr)] = {
                "config": name,
                "lr": lr,
                "status": r.status,
                "train_loss": float(h.train_loss[-1]),
                "val_loss": float(h.val_loss[-1]),
                "train_acc": float(h.train_acc[-1]) if ok else nan,
                "val_acc": float(h.val_acc[-1]) if ok else nan,
                "best_val_acc": float(np.nanmax(h.val_acc)) if ok else nan,
                "acc_gap": float(h.train_acc[-1] - h.val_acc[-1]) if ok else nan,
                "loss_gap": float(h.val_loss[-1] - h.train_loss[-1]) if ok else nan,
                "history": h.as_dict(),
            }

    print(f"MLP {widths} on half the digits ({len(data.x_train)} training examples), SGD")
    print(
        f"{'config':<14} {'lr':>6} {'train loss':>10} {'val loss':>9} {'train acc':>10} "
        f"{'val acc':>8} {'acc gap':>8} {'status':>11}"
    )
    for r in results.values():
        print(
            f"{r['config']:<14} {r['lr']:>6g} {r['train_loss']:>10.3g} {r['val_loss']:>9.3g} "
            f"{r['train_acc']:>10.4f} {r['val_acc']:>8.4f} {r['acc_gap']:>8.4f} {r['status']:>11}"
        )

    os.makedirs(args.out, exist_ok=True)
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for i, name in enumerate(configs):
        accs = [results[(name, lr)]["val_acc"] for lr in lrs]
        accs = [a if np.isfinite(a) else 0.0 for a in accs]
        ax1.semilogx(lrs, accs, "o-", label=name, color=f"C{i}")
        h = results[(name, max(lrs))]["history"]
        ax2.plot(h["epoch"], h["train_loss"], "-", color=f"C{i}", label=f"{name} train")
        ax2.plot(h["epoch"], h["val_loss"], ":", color=f"C{i}", label=f"{name} val")
    ax1.set(
        xlabel="learning rate", ylabel="final validation accuracy (0: diverged)", ylim=(0, 1.02)
    )
    ax1.set_title("accuracy vs learning rate")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.set(xlabel="epoch", ylabel="loss", yscale="log")
    ax2.set_title(f"train (solid) / val (dotted) loss, lr = {max(lrs):g}")
    ax2.legend(fontsize=7, ncol=2)
    ax2.grid(alpha=0.3)
    diverged = [n for n in configs if results[(n, max(lrs))]["status"] == "non_finite"]
    if diverged:
        note = "diverged (NaN): " + ", ".join(diverged)
        ax2.text(0.02, 0.02, note, transform=ax2.transAxes, ha="left", va="bottom")
    # The gap at the learning rate where the plain network (the first configuration) does best.
    first = next(iter(configs))
    ref = max(lrs, key=lambda lr: np.nan_to_num(results[(first, lr)]["val_acc"]))
    names = list(configs)
    tr = [results[(n, ref)]["train_loss"] for n in names]
    va = [results[(n, ref)]["val_loss"] for n in names]
    pos = np.arange(len(names))
    ax3.bar(pos - 0.2, tr, 0.4, label="train loss")
    ax3.bar(pos + 0.2, va, 0.4, label="validation loss")
    for i, n in enumerate(names):
        acc = results[(n, ref)]["val_acc"]
        ax3.text(pos[i] + 0.2, va[i], f"{acc:.3f}", ha="center", va="bottom", fontsize=8)
    ax3.set_xticks(pos, names, fontsize=8)
    ax3.set(yscale="log", ylabel="final loss (labels: val accuracy)")
    ax3.set_title(f"train / validation gap, lr = {ref:g}")
    ax3.legend()
    plots.save_figure(fig, os.path.join(args.out, "06_batchnorm_dropout.png"), dpi=110)
    out = {f"{k[0]} @ {k[1]:g}": v for k, v in results.items()}
    with open(os.path.join(args.out, "06_batchnorm_dropout.json"), "w") as f:
        json.dump(out, f)
    return out


if __name__ == "__main__":
    main()
