"""Initialisation and signal flow: activation and gradient variances per layer of a deep MLP.

A 10-hidden-layer MLP (width 256) with tanh or ReLU units is initialised three ways -- too small
(:math:`N(0, 0.01^2)`), the textbook rule (Xavier/Glorot for tanh, He for ReLU) and too large
(:math:`N(0, 1)`) -- and one batch of digits is pushed through it. For every hidden layer the
example measures the variance of the activations :math:`y^l` (forward signal) and of the
back-propagated gradients :math:`\\partial L/\\partial h^l` (backward signal; measured with
zero "taps" added to the pre-activations). Good initialisation keeps both roughly constant
across layers; too small makes them vanish, too large saturates tanh (activations pile up at
:math:`\\pm1`) or explodes ReLU.

    python examples/05_init_signal_flow.py [--quick] [--out DIR]

Prints a table of per-layer variances and writes ``<out>/05_init_signal_flow.png`` (variances
per layer) and ``<out>/05_init_histograms.png`` (tanh activation histograms per layer).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from matplotlib.figure import Figure

from gradlab.lab import example_parser, init, plots, positive_int
from gradlab.lab.data import load_digits
from gradlab.lab.models import MLP, merge_model, split_model


def schemes(activation: str) -> dict:
    """The three initialisations compared for ``activation``."""
    good = init.xavier_normal("tanh") if activation == "tanh" else init.he_normal()
    good_name = "Xavier" if activation == "tanh" else "He"
    return {
        "too small N(0, 0.01²)": init.normal(0.01),
        good_name: good,
        "too large N(0, 1)": init.normal(1.0),
    }


@functools.partial(jax.jit, static_argnums=0)
def _signals(graphdef, params, x, y, taps):
    """Loss, per-layer activations and their variances, and Var[dL/dh] (one compile per net)."""

    def loss(taps):
        model = merge_model(graphdef, params, {})
        out, _, post = model(x, taps=taps, return_hidden=True)
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), post

    (ce, post), grads = jax.value_and_grad(loss, has_aux=True)(taps)
    # Scale by the batch size: the per-example gradient of the mean loss.
    return ce, post, [jnp.var(a) for a in post], [jnp.var(g * x.shape[0]) for g in grads]


def measure(activation: str, kernel_init, x, y, *, depth: int, width: int, seed: int):
    """Per-layer variance of activations and of dL/dh (pre-activation gradients)."""
    model = MLP(
        x.shape[1],
        [width] * depth,
        10,
        activation=activation,
        kernel_init=kernel_init,
        rngs=nnx.Rngs(seed),
    )
    graphdef, params, _ = split_model(model)
    taps = [jnp.zeros((x.shape[0], width)) for _ in range(depth)]
    ce, post, act_var, grad_var = _signals(graphdef, params, x, y, taps)
    return (
        float(ce),
        np.asarray(act_var, np.float64),
        np.asarray(grad_var, np.float64),
        [np.asarray(a) for a in post],
    )


def main(argv=None) -> dict:
    p = example_parser(__doc__, "4 hidden layers")
    p.add_argument("--depth", type=positive_int, default=None)
    p.add_argument("--width", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    depth = args.depth if args.depth is not None else (4 if args.quick else 10)
    width = args.width if args.width is not None else 256
    data = load_digits(seed=args.seed)
    x = jnp.asarray(data.x_train[:512])
    y = jnp.asarray(data.y_train[:512])

    results: dict = {}
    hists = {}
    for activation in ("tanh", "relu"):
        results[activation] = {}
        for name, kinit in schemes(activation).items():
            ce, av, gv, post = measure(
                activation, kinit, x, y, depth=depth, width=width, seed=args.seed
            )
            results[activation][name] = {
                "loss": ce,
                "activation_var": av.tolist(),
                "gradient_var": gv.tolist(),
            }
            if activation == "tanh":
                hists[name] = post

    print(f"MLP with {depth} hidden layers of {width} units, a batch of {x.shape[0]} digits")
    for activation, table in results.items():
        print(f"\n{activation}: variance of activations y^l / of gradients dL/dh^l per layer")
        header = " ".join(f"{'L' + str(i + 1):>9}" for i in range(depth))
        print(f"{'init':<22} {'':>5} {header}")
        for name, r in table.items():
            a = " ".join(f"{v:>9.2e}" for v in r["activation_var"])
            g = " ".join(f"{v:>9.2e}" for v in r["gradient_var"])
            print(f"{name:<22} {'act':>5} {a}")
            print(f"{'':<22} {'grad':>5} {g}")

    os.makedirs(args.out, exist_ok=True)
    layers = np.arange(1, depth + 1)
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    for j, (activation, table) in enumerate(results.items()):
        for name, r in table.items():
            axes[0, j].semilogy(layers, r["activation_var"], "o-", label=name)
            axes[1, j].semilogy(layers, r["gradient_var"], "o-", label=name)
        axes[0, j].set_title(f"{activation}: Var[activations]")
        axes[1, j].set_title(f"{activation}: Var[dL/dh] (backward)")
        axes[1, j].set_xlabel("hidden layer")
        for i in range(2):
            axes[i, j].grid(alpha=0.3, which="both")
            axes[i, j].legend(fontsize=8)
    plots.save_figure(fig, os.path.join(args.out, "05_init_signal_flow.png"), dpi=110)

    shown = list(range(0, depth, max(1, depth // 5)))
    fig = Figure(figsize=(2.2 * len(shown), 6), layout="constrained")
    axes = fig.subplots(len(hists), len(shown), sharey="row")
    for i, (name, post) in enumerate(hists.items()):
        for j, layer in enumerate(shown):
            ax = axes[i, j]
            ax.hist(post[layer].ravel(), bins=40, range=(-1, 1), color=f"C{i}")
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"layer {layer + 1}")
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.suptitle("tanh activations per layer (histograms on [-1, 1])")
    plots.save_figure(fig, os.path.join(args.out, "05_init_histograms.png"), dpi=110)
    with open(os.path.join(args.out, "05_init_signal_flow.json"), "w") as f:
        json.dump(results, f)
    return results


if __name__ == "__main__":
    main()
