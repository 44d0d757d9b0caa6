r"""K-means by SGD vs mini-batch vs batch updates: faster vs better minima, spread over seeds.

The CMU deck's "SGD example: K-means" compares fitting K-means centres one point at a time
(stochastic), a few points at a time (mini-batch) and with all points per update (batch, Lloyd's
algorithm). Its observations, which this script measures on generated Gaussian blobs:

* SGD converges faster (in examples processed),
* but to a poorer minimum,
* with a rather large variation between runs;
* mini-batch performs comparably to batch but converges orders of magnitude faster.

Every method starts from the same random centres for a given seed (so the comparison isolates
the update rule), runs for the same number of *examples processed*, and all seeds of a method run
as one ``vmap``-ped, compiled program (:func:`gradlab.lab.kmeans.kmeans_seeds`). The table reports
the final inertia (sum of squared distances to the nearest centre) over seeds and how many
examples each method needed to get within 5% of its own final value; scikit-learn's ``KMeans``
(best of 10 k-means++ restarts) gives a reference for a good minimum.

Run: ``python examples/04_kmeans_sgd.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np

from gradlab.lab import data, example_parser, kmeans, plots, positive_int


def make_data(n: int, k: int, seed: int = 0) -> np.ndarray:
    ds = data.make_blobs(n, num_classes=k, spread=1.0, separation=8.0, seed=seed, standardize=False)
    return np.concatenate([ds.x_train, ds.x_val]).astype(np.float32)


def methods(n: int, epochs: int, records: int, quick: bool = False) -> dict[str, dict]:
    """Run settings with the same budget of examples processed (``epochs * n``); ``quick``
    leaves out the fixed-rate SGD run (one compilation less in the smoke test)."""
    out = {}
    for name, method, batch, lr in [
        ("SGD (1/count)", "sgd", 1, None),
        ("SGD (eta=0.2)", "sgd", 1, 0.2),
        ("mini-batch 32", "minibatch", 32, None),
        ("batch (Lloyd)", "batch", n, None),
    ]:
        if quick and lr is not None:
            continue
        if method == "batch":  # one step per epoch, recorded every step
            steps, every = epochs, 1
        else:
            steps = max(records, round(epochs * n / batch / records) * records)
            every = steps // records
        out[name] = dict(
            method=method, batch_size=batch, learning_rate=lr, steps=steps, record_every=every
        )
    return out


def examples_to_reach(inertia: np.ndarray, examples: np.ndarray, rtol: float) -> np.ndarray:
    """Per seed: the examples processed when the inertia first came within ``rtol`` of its
    final value (and stayed within it from then on is not required)."""
    target = inertia[:, -1:] * (1 + rtol)
    first = np.argmax(inertia <= target, axis=1)
    return examples[first]


def main(argv: list[str] | None = None) -> int:
    parser = example_parser(__doc__, "small data, few seeds")
    parser.add_argument("--seeds", type=positive_int, default=None, help="number of seeds")
    args = parser.parse_args(argv)
    n, k, epochs = (400, 6, 4) if args.quick else (3000, 10, 10)
    seeds = args.seeds if args.seeds is not None else (4 if args.quick else 32)
    os.makedirs(args.out, exist_ok=True)
    x = make_data(n, k)

    print(f"{n} points from {k} Gaussian blobs; k = {k}; {seeds} seeds; budget {epochs} epochs")
    if args.quick:
        best = None
    else:
        from sklearn.cluster import KMeans

        best = float(KMeans(k, n_init=10, random_state=0).fit(x).inertia_)
        print(f"reference: scikit-learn KMeans, best of 10 k-means++ restarts: inertia {best:.1f}")

    results, timings = {}, {}
    for name, kw in methods(n, epochs, 40 if args.quick else 200, args.quick).items():
        t0 = time.perf_counter()
        res = kmeans.kmeans_seeds(x, k, seeds, **kw)
        jax.block_until_ready(res.inertia)
        timings[name] = time.perf_counter() - t0
        results[name] = (np.asarray(res.inertia), np.asarray(res.examples[0]), res, kw)

    if best is None:  # quick mode: the best minimum any run found
        best = float(min(h[:, -1].min() for h, _, _, _ in results.values()))
        print(f"reference: best inertia over all runs {best:.1f}")
    lloyd = results["batch (Lloyd)"][0][:, -1]
    print()
    head = (
        f"{'method':<15} {'steps':>6} {'mean J':>9} {'std':>8} {'min':>8} {'max':>8} "
        f"{'J/best':>7} {'J/Lloyd':>8} {'worse':>6} {'ex. to 5%':>10} {'time s':>7}"
    )
    print(head)
    print("-" * len(head))
    for name, (hist, ex, _, kw) in results.items():
        final = hist[:, -1]
        reach = np.median(examples_to_reach(hist, ex, 0.05))
        print(
            f"{name:<15} {kw['steps']:>6} {final.mean():>9.1f} {final.std():>8.1f} "
            f"{final.min():>8.1f} {final.max():>8.1f} {final.mean() / best:>7.3f} "
            f"{np.median(final / lloyd):>8.4f} {np.mean(final > lloyd * (1 + 1e-4)):>6.0%} "
            f"{reach:>10.0f} {timings[name]:>7.2f}"
        )
    print(
        "J/Lloyd: median over seeds of the final inertia over batch (Lloyd) from the same "
        "initial centres;\nworse: share of seeds ending above Lloyd; ex. to 5%: median examples "
        "processed until within 5% of the run's final inertia; time includes compilation"
    )

    # Figure 1: inertia vs examples processed, median and 10-90% band over seeds.
    medians = {name: np.median(h, axis=0) for name, (h, _, _, _) in results.items()}
    xs = {name: np.maximum(ex, 1) for name, (_, ex, _, _) in results.items()}
    fig = plots.plot_loss_curves(
        medians,
        x=xs,
        xlabel="examples processed",
        ylabel="inertia (median over seeds)",
        title="K-means: SGD vs mini-batch vs batch",
    )
    ax = fig.axes[0]
    colors = plots.optimizer_colors(list(results))
    for name, (h, ex, _, _) in results.items():
        lo, hi = np.percentile(h, [10, 90], axis=0)
        ax.fill_between(np.maximum(ex, 1), lo, hi, color=colors[name], alpha=0.15)
    ax.set_xscale("log")
    ax.axhline(best, color="k", ls="--", lw=0.8)
    plots.save_figure(fig, os.path.join(args.out, "04_kmeans_curves.png"))

    # Figure 2: final inertia of every seed, per method.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(0)
    for i, (name, (h, _, _, _)) in enumerate(results.items()):
        final = h[:, -1] / best
        ax.scatter(i + rng.uniform(-0.15, 0.15, final.size), final, s=14, color=colors[name])
        ax.hlines(np.median(final), i - 0.3, i + 0.3, color="k", lw=1.5)
    ax.set_xticks(range(len(results)), list(results), fontsize="small")
    ax.set_ylabel("final inertia / best known")
    ax.set_yscale("log")
    ax.set_title(f"spread over {seeds} seeds (same initial centres per seed)")
    ax.grid(True, axis="y", alpha=0.3)
    plots.save_figure(fig, os.path.join(args.out, "04_kmeans_spread.png"))

    # Figure 3: the clusters found by each method for seed 0.
    fig = Figure(figsize=(8, 7), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (name, (h, _, res, _)) in zip(axes, results.items(), strict=False):
        c = np.asarray(res.centers[0])
        lab = np.asarray(kmeans.assign(x, c))
        ax.scatter(x[:, 0], x[:, 1], c=lab, s=3, cmap="tab10", alpha=0.6)
        ax.plot(c[:, 0], c[:, 1], "k*", ms=12)
        ax.set_title(f"{name}: J = {h[0, -1]:.0f}", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    plots.save_figure(fig, os.path.join(args.out, "04_kmeans_clusters.png"))
    print(f"\nfigures written to {args.out}/04_kmeans_*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
