"""Batch vs stochastic vs mini-batch gradient descent, and the 1/b variance of a mini-batch.

Part 1 trains softmax regression on the digits with batch gradient descent (b = n), stochastic
gradient descent (b = 1) and mini-batch gradient descent (b = 32) for the same number of
*examples processed* (each epoch draws a fresh permutation), and plots the full training loss
against examples processed: SGD makes many cheap, noisy steps and gets low quickly; batch GD
makes few exact steps.

Part 2 measures the variance of the mini-batch gradient at a fixed parameter. With per-example
gradients :math:`g_i`, their mean :math:`\\bar g` and :math:`\\sigma^2 = \\frac1n\\sum_i \\|g_i -
\\bar g\\|^2`, a batch of ``b`` examples drawn without replacement has

.. math::  E\\|g_B - \\bar g\\|^2 = \\frac{\\sigma^2}{b}\\,\\frac{n - b}{n - 1},

i.e. the variance falls like :math:`1/b` (times the finite-population correction). The example
draws many random batches per ``b`` and prints the measured ratio
:math:`E\\|g_B - \\bar g\\|^2 / \\sigma^2` next to :math:`1/b` and the corrected value.

    python examples/03_batch_vs_minibatch.py [--quick] [--out DIR]
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from gradlab.lab import example_parser, plots, positive_int
from gradlab.lab.data import load_digits
from gradlab.optimizers.sgd import sgd

REGIMES = {"batch GD (b=n)": ("all", 0.5), "mini-batch (b=32)": (32, 0.1), "SGD (b=1)": (1, 0.01)}


def loss_fn(params, x, y):
    logits = x @ params["w"] + params["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def init_params(d: int, k: int):
    return {"w": jnp.zeros((d, k), jnp.float32), "b": jnp.zeros((k,), jnp.float32)}


def run_regime(x, y, batch_size, lr, *, epochs: int, points_per_epoch: int, seed: int):
    """SGD with ``batch_size`` from zero, a fresh permutation per epoch.

    Returns:
      ``(examples, losses, params)``: the full training loss after every ``n /
      points_per_epoch`` examples processed (and at the start), and the final parameters.
    """
    n, d = x.shape
    b = n if batch_size == "all" else int(batch_size)
    steps_per_epoch = n // b
    # Evaluate after every `every` updates (at least one update between evaluations).
    every = max(1, steps_per_epoch // points_per_epoch)
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(n)[: steps_per_epoch * b] for _ in range(epochs)])
    total = (len(idx) // (b * every)) * b * every
    idx = jnp.asarray(idx[:total].reshape(-1, every, b))
    params = init_params(d, int(y.max()) + 1)
    opt = sgd(lr)

    def step(carry, bidx):
        p, s = carry
        g = jax.grad(loss_fn)(p, x[bidx], y[bidx])
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    def chunk(carry, bidx):
        carry, _ = jax.lax.scan(step, carry, bidx)
        return carry, loss_fn(carry[0], x, y)

    @jax.jit
    def go(params, idx):
        (last, _), losses = jax.lax.scan(chunk, (params, opt.init(params)), idx)
        return jnp.concatenate([loss_fn(params, x, y)[None], losses]), last

    losses, last = go(params, idx)
    return np.arange(idx.shape[0] + 1) * every * b, np.asarray(losses), last


def gradient_variance(x, y, params, sizes, draws: int, seed: int):
    """Measured ``E||g_B - g||^2`` for each batch size (batches drawn without replacement).

    One compiled program: per-example gradients by ``vmap(grad)``; for every draw a random
    permutation, whose first ``b`` entries form the batch of size ``b``: the running means of
    the permuted gradients give every batch size at once.
    """
    n = x.shape[0]
    sizes = np.asarray(sizes)

    @jax.jit
    def run(key):
        per_example = jax.vmap(lambda xi, yi: jax.grad(loss_fn)(params, xi[None], yi[None]))(x, y)
        flat = jnp.concatenate([v.reshape(n, -1) for v in jax.tree.leaves(per_example)], axis=1)
        gbar = flat.mean(0)
        sigma2 = jnp.mean(jnp.sum((flat - gbar) ** 2, axis=1))

        def one_draw(key):
            perm = jax.random.permutation(key, n)[: sizes.max()]
            means = jnp.cumsum(flat[perm], axis=0)[sizes - 1] / sizes[:, None]
            return jnp.sum((means - gbar) ** 2, axis=1)

        devs = jax.lax.map(one_draw, jax.random.split(key, draws))
        return sigma2, devs.mean(0)

    sigma2, var = run(jax.random.key(seed))
    return float(sigma2), {int(b): float(v) for b, v in zip(sizes, var, strict=True)}


def main(argv=None) -> dict:
    p = example_parser(__doc__, "one epoch, 200 draws")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--draws", type=positive_int, default=None, help="random batches per batch size")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 20)
    draws = args.draws if args.draws is not None else (200 if args.quick else 10000)
    data = load_digits(seed=args.seed)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    n = x.shape[0]

    curves = {}
    for name, (bs, lr) in REGIMES.items():
        ex, losses, _ = run_regime(x, y, bs, lr, epochs=epochs, points_per_epoch=20, seed=args.seed)
        curves[name] = ex, losses
    print(f"Softmax regression on digits (n={n}), {epochs} epochs of examples each:")
    print(f"{'regime':<20} {'lr':>6} {'updates':>8} {'final loss':>11}")
    for name, (ex, ls) in curves.items():
        bs, lr = REGIMES[name]
        b = n if bs == "all" else bs
        print(f"{name:<20} {lr:>6g} {int(ex[-1]) // b:>8d} {ls[-1]:>11.4f}")

    # Variance at a partly trained point (where gradients are informative but not tiny):
    # after five batch gradient steps.
    *_, params = run_regime(x, y, "all", 0.5, epochs=5, points_per_epoch=1, seed=args.seed)
    sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    sigma2, var = gradient_variance(x, y, params, sizes, draws, args.seed)
    print(f"\nMini-batch gradient variance E||g_B - g||^2 ({draws} batches per size):")
    print(f"sigma^2 = mean_i ||g_i - g||^2 = {sigma2:.4g} (exact, from all per-example gradients)")
    print(f"{'b':>5} {'measured':>11} {'measured/sigma^2':>17} {'1/b':>8} {'(n-b)/(b(n-1))':>15}")
    rows = []
    for b in sizes:
        corr = (n - b) / (b * (n - 1))
        ratio = var[b] / sigma2
        rows.append({"b": b, "variance": var[b], "ratio": ratio, "one_over_b": 1 / b, "fpc": corr})
        print(f"{b:>5d} {var[b]:>11.4g} {ratio:>17.4f} {1 / b:>8.4f} {corr:>15.4f}")

    os.makedirs(args.out, exist_ok=True)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for name, (ex, ls) in curves.items():
        ax1.plot(ex, ls, label=name)
    ax1.set(xlabel="examples processed", ylabel="training loss", yscale="log")
    ax1.set_title("same work, different batch sizes")
    ax1.legend()
    ax1.grid(alpha=0.3)
    bs_arr = np.asarray(sizes, float)
    ax2.loglog(bs_arr, [var[b] for b in sizes], "o", label="measured")
    ax2.loglog(bs_arr, sigma2 / bs_arr, "--", label=r"$\sigma^2/b$")
    ax2.loglog(
        bs_arr, sigma2 * (n - bs_arr) / (bs_arr * (n - 1)), ":", label=r"$\sigma^2(n-b)/(b(n-1))$"
    )
    ax2.set(xlabel="batch size b", ylabel=r"$E\|g_B - \bar g\|^2$")
    ax2.set_title("variance of the mini-batch gradient")
    ax2.legend()
    ax2.grid(alpha=0.3, which="both")
    plots.save_figure(fig, os.path.join(args.out, "03_batch_vs_minibatch.png"), dpi=110)
    result = {
        "curves": {
            k: {"examples": v[0].tolist(), "loss": v[1].tolist()} for k, v in curves.items()
        },
        "variance": rows,
        "sigma2": sigma2,
    }
    with open(os.path.join(args.out, "03_batch_vs_minibatch.json"), "w") as f:
        json.dump(result, f)
    return result


if __name__ == "__main__":
    main()
